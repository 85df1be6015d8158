"""Estimators: hand-checked numbers, the naive reference, properties, and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import softmax_theory as st_
from softmax_theory import estimators
from softmax_theory.reference import (
    mp_entropy_change,
    naive_covariance,
    naive_entropy,
    naive_first_order_entropy_change,
)

LOG2 = np.log(2.0)


# --- numbers a person can check -------------------------------------------------------------


def test_two_uniform_actions_have_entropy_log2():
    assert st_.entropy(np.zeros(2)) == pytest.approx(LOG2, abs=1e-15)


def test_uniform_entropy_is_log_a_and_one_hot_is_zero():
    assert st_.entropy(np.zeros(1024)) == pytest.approx(np.log(1024), abs=1e-12)
    assert st_.entropy(np.array([1e4, -1e4, 0.0])) == 0.0


def test_covariance_by_hand():
    # π = (½, ½): Cov(x, y) = ¼·(x0 − x1)(y0 − y1)
    assert st_.covariance(np.zeros(2), [1.0, 3.0], [2.0, -2.0]) == pytest.approx(0.25 * -2 * 4)


def test_advantages_by_hand():
    # π = (½, ½), r = (1, 0): V = ½, A = (½, −½)
    np.testing.assert_allclose(st_.advantages(np.zeros(2), [1.0, 0.0]), [0.5, -0.5])


def test_updates_by_hand():
    z = np.zeros(2)
    # NPG: z + η·A = (0.05, −0.05); PG: z + η·π·A = (0.025, −0.025), weight 2 doubles it
    np.testing.assert_allclose(st_.npg_update(z, [1.0, 0.0], 0.1), [0.05, -0.05])
    np.testing.assert_allclose(st_.pg_update(z, [1.0, 0.0], 0.1), [0.025, -0.025])
    np.testing.assert_allclose(
        st_.pg_update(z[None], [[1.0, 0.0]], 0.1, state_weights=[2.0]), [[0.05, -0.05]]
    )


def test_uniform_policy_has_zero_first_order_change():
    # log π is constant at the uniform policy, so −Cov(log π, δ) = 0 for any δ
    assert st_.first_order_entropy_change(np.zeros(5), np.arange(5.0)) == pytest.approx(
        0, abs=1e-15
    )


def test_second_order_at_uniform_is_minus_half_variance():
    # At π uniform: g = 0, so ΔH ≈ −½·Var(δ). δ = (1, −1)·ε: Var = ε²
    eps = 1e-3
    assert st_.second_order_entropy_change(np.zeros(2), [eps, -eps]) == pytest.approx(-0.5 * eps**2)


def test_theorem_predictions_by_hand():
    # z = (log 3, 0): π = (¾, ¼), r = (1, 0): A = (¼, −¾), log π = (log ¾, log ¼)
    z = np.array([np.log(3.0), 0.0])
    p = np.array([0.75, 0.25])
    adv = np.array([0.25, -0.75])
    logp = np.log(p)

    def cov(x, y):
        return (p * x * y).sum() - (p * x).sum() * (p * y).sum()

    assert st_.npg_entropy_change(z, [1.0, 0.0], 0.1) == pytest.approx(-0.1 * cov(logp, adv))
    assert st_.pg_entropy_change(z, [1.0, 0.0], 0.1) == pytest.approx(-0.1 * cov(logp, p * adv))


# --- against the naive reference: shapes × block sizes ---------------------------------------


@pytest.mark.parametrize("shape", [(3,), (1, 7), (5, 4), (2, 3, 17), (257, 64)])
@pytest.mark.parametrize("block_bytes", [8, 200, 1 << 21])
def test_fast_path_equals_naive_formula(shape, block_bytes, monkeypatch):
    monkeypatch.setattr(estimators, "ROW_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(sum(shape) + block_bytes)
    z = 2.0 * rng.standard_normal(shape)
    d = rng.standard_normal(shape)
    np.testing.assert_allclose(st_.entropy(z), naive_entropy(z), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        st_.first_order_entropy_change(z, d),
        naive_first_order_entropy_change(z, d),
        rtol=1e-10,
        atol=1e-13,
    )
    h, first = st_.entropy_and_first_order_change(z, d)
    np.testing.assert_array_equal(h, st_.entropy(z))
    np.testing.assert_array_equal(first, st_.first_order_entropy_change(z, d))
    np.testing.assert_allclose(
        st_.covariance(z, d, z), naive_covariance(z, d, z), rtol=1e-10, atol=1e-13
    )


def test_exact_change_matches_high_precision_reference_at_tiny_steps():
    rng = np.random.default_rng(3)
    for scale in (0.5, 4.0):
        z = scale * rng.standard_normal(33)
        u = rng.standard_normal(33)
        for lr in (1e-1, 1e-5, 1e-9):
            exact = mp_entropy_change(z, lr * u)
            assert st_.entropy_change(z, lr * u) == pytest.approx(exact, rel=1e-12)


def test_exact_change_falls_back_to_the_difference_for_huge_steps():
    z = np.array([0.0, 1.0, 2.0])
    d = np.array([0.0, 0.0, 200.0])
    assert st_.entropy_change(z, d) == pytest.approx(st_.entropy(z + d) - st_.entropy(z), abs=1e-15)


def test_first_order_is_the_derivative():
    rng = np.random.default_rng(4)
    z, d = rng.standard_normal(9), rng.standard_normal(9)
    h = 1e-6
    fd = (st_.entropy(z + h * d) - st_.entropy(z - h * d)) / (2 * h)
    assert st_.first_order_entropy_change(z, d) == pytest.approx(fd, rel=1e-7)


def test_second_order_error_shrinks_like_the_cube():
    rng = np.random.default_rng(5)
    z, u = 2 * rng.standard_normal(16), rng.standard_normal(16)
    errs = [
        abs(st_.second_order_entropy_change(z, s * u) - st_.entropy_change(z, s * u))
        for s in (1e-2, 5e-3)
    ]
    assert errs[0] / errs[1] == pytest.approx(8.0, rel=0.05)


# --- extreme and bad input -------------------------------------------------------------------


def test_extreme_logits_stay_finite():
    z = np.array([[1e4, -1e4, 0.0, 5.0], [-1e4, -1e4, -1e4, -1e4 + 1]])
    d = np.array([[1.0, -2.0, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]])
    r = np.array([1.0, 0.0, 0.5, 0.2])
    for value in (
        st_.entropy(z),
        st_.entropy_change(z, d),
        st_.first_order_entropy_change(z, d),
        st_.second_order_entropy_change(z, d),
        st_.pg_entropy_change(z, r, 0.1),
        st_.npg_entropy_change(z, r, 0.1),
        st_.pg_update(z, r, 0.1),
    ):
        assert np.isfinite(value).all()
    assert st_.entropy(z)[1] == pytest.approx(naive_entropy(np.array([0, 0, 0, 1.0])))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_named(bad):
    z = np.array([0.0, bad, 1.0])
    for call in (
        lambda: st_.entropy(z),
        lambda: st_.first_order_entropy_change(z, np.ones(3)),
        lambda: st_.entropy_change(z, np.ones(3)),
        lambda: st_.advantages(z, np.ones(3)),
    ):
        with pytest.raises(ValueError, match="logits"):
            call()


MASKED = np.array([[1.0, 2.0, -np.inf, 0.5, -np.inf], [0.3, -np.inf, -1.0, 2.0, 0.0]])


def _support(row: np.ndarray) -> np.ndarray:
    return np.isfinite(row)


@pytest.mark.parametrize(
    "fn",
    [
        lambda z, d, r: st_.entropy(z),
        lambda z, d, r: st_.first_order_entropy_change(z, d),
        lambda z, d, r: st_.second_order_entropy_change(z, d),
        lambda z, d, r: st_.entropy_change(z, d),
        lambda z, d, r: st_.npg_entropy_change(z, r, 0.1),
        lambda z, d, r: st_.pg_entropy_change(z, r, 0.1),
        lambda z, d, r: st_.covariance(z, st_.log_softmax(z), r),
    ],
)
def test_masked_logits_give_the_quantity_on_the_unmasked_support(fn):
    """A −inf logit is an action with probability 0: every quantity equals the one computed on
    the remaining actions alone."""
    rng = np.random.default_rng(0)
    d = rng.standard_normal(MASKED.shape)
    r = rng.random(MASKED.shape)
    got = np.atleast_1d(fn(MASKED, d, r))
    for i, row in enumerate(MASKED):
        keep = _support(row)
        expected = fn(row[keep], d[i][keep], r[i][keep])
        assert got[i] == pytest.approx(float(expected), rel=1e-12, abs=1e-15)
    with pytest.raises(ValueError, match="every action masked"):
        st_.entropy(np.array([-np.inf, -np.inf]))


def test_logits_spanning_the_float_range_stay_finite():
    # z − max z overflows to −inf for the second entry: its probability is 0, H is 0
    assert st_.entropy(np.array([1e308, -1e308])) == 0.0
    assert st_.first_order_entropy_change(np.array([1e308, -1e308]), np.ones(2)) == 0.0


def test_a_string_step_size_is_refused():
    with pytest.raises(ValueError, match="lr: the step size must be a number"):
        st_.npg_update(np.zeros(3), np.ones(3), "0.1")
    with pytest.raises(ValueError, match="logits: expected numbers"):
        st_.entropy(np.array(["a", "b"]))


def test_non_finite_delta_and_rewards_are_named():
    with pytest.raises(ValueError, match="delta"):
        st_.first_order_entropy_change(np.zeros(3), [0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="rewards"):
        st_.npg_update(np.zeros(3), [0.0, np.inf, 0.0], 0.1)


def test_shape_mismatch_empty_axis_and_bad_lr_are_named():
    with pytest.raises(ValueError, match="delta"):
        st_.first_order_entropy_change(np.zeros((2, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="rewards"):
        st_.advantages(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="logits.*empty"):
        st_.entropy(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="scalar"):
        st_.entropy(np.float64(1.0))
    for lr in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="lr"):
            st_.npg_update(np.zeros(3), np.zeros(3), lr)
    with pytest.raises(ValueError, match="state_weights"):
        st_.pg_update(np.zeros((2, 3)), np.zeros((2, 3)), 0.1, state_weights=[1.0, 2.0, 3.0])


# --- properties ------------------------------------------------------------------------------

n_actions = st.integers(min_value=2, max_value=12)


def _vec(n, lo=-8.0, hi=8.0):
    return arrays(np.float64, n, elements=st.floats(lo, hi, allow_nan=False))


@st.composite
def logits_and_vectors(draw, count=1, lo=-1.0, hi=1.0):
    n = draw(n_actions)
    return (draw(_vec(n)), *(draw(_vec(n, lo, hi)) for _ in range(count)))


@given(logits_and_vectors(count=0))
def test_entropy_is_between_zero_and_log_a(args):
    (z,) = args
    h = st_.entropy(z)
    assert -1e-12 <= h <= np.log(z.size) + 1e-12


@given(logits_and_vectors(count=1), st.floats(-50, 50))
def test_invariant_to_constant_shifts(args, c):
    z, d = args
    assert st_.entropy(z + c) == pytest.approx(st_.entropy(z), abs=1e-10)
    assert st_.first_order_entropy_change(z + c, d + c) == pytest.approx(
        st_.first_order_entropy_change(z, d), abs=1e-10
    )
    assert st_.entropy_change(z, d + c) == pytest.approx(st_.entropy_change(z, d), abs=1e-10)
    assert st_.second_order_entropy_change(z, d + c) == pytest.approx(
        st_.second_order_entropy_change(z, d), abs=1e-10
    )


@given(logits_and_vectors(count=3, lo=-3, hi=3), st.floats(-3, 3))
def test_covariance_is_symmetric_and_bilinear(args, a):
    z, x, y, w = args
    assert st_.covariance(z, x, y) == pytest.approx(st_.covariance(z, y, x), abs=1e-12)
    assert st_.covariance(z, a * x + w, y) == pytest.approx(
        a * st_.covariance(z, x, y) + st_.covariance(z, w, y), abs=1e-10
    )


@given(logits_and_vectors(count=1), st.floats(1e-4, 1e-1))
def test_first_order_error_is_bounded_by_c_delta_squared(args, size):
    z, u = args
    d = size * u
    dmax = np.abs(d).max()
    err = abs(st_.entropy_change(z, d) - st_.first_order_entropy_change(z, d))
    # |H''(t)| ≤ E u² (1 + max|log π − E log π|) ≤ 4|δ|∞²·(1 + range(z) + 2|δ|∞) along the
    # path z + tδ, t ∈ [0, 1]; Taylor's remainder is half of that (docs/theory.md, eq. 12).
    c = 2.0 * (1.0 + np.ptp(z) + 2 * dmax)
    assert err <= c * dmax**2 + 1e-15


@given(logits_and_vectors(count=1, lo=0.0, hi=1.0), st.floats(1e-3, 1.0))
def test_theorem_predictions_equal_lemma1_on_the_actual_update(args, lr):
    z, r = args
    assert st_.pg_entropy_change(z, r, lr) == pytest.approx(
        st_.first_order_entropy_change(z, st_.pg_update(z, r, lr) - z), abs=1e-12
    )
    assert st_.npg_entropy_change(z, r, lr) == pytest.approx(
        st_.first_order_entropy_change(z, st_.npg_update(z, r, lr) - z), abs=1e-12
    )


@settings(max_examples=50)
@given(logits_and_vectors(count=1, lo=0.0, hi=1.0))
def test_advantages_have_zero_mean_under_the_policy(args):
    z, r = args
    p = st_.softmax(z)
    assert (p * st_.advantages(z, r)).sum() == pytest.approx(0.0, abs=1e-12)

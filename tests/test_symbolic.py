"""The sympy derivations behind the closed forms, and a control that they can fail."""

import sympy as sp

from softmax_theory import symbolic


def test_lemma1_is_the_derivative_of_entropy():
    assert symbolic.first_derivative(3)


def test_second_derivative_closed_form():
    assert symbolic.second_derivative(3)


def test_pg_gradient_is_pi_times_advantage():
    assert symbolic.pg_gradient(3)


def test_advantage_is_a_natural_gradient_direction():
    assert symbolic.npg_direction(3)


def test_the_zero_test_rejects_a_wrong_closed_form():
    s = symbolic.symbols(2)
    p, logp = symbolic._softmax(s.z)
    derived = sp.diff(symbolic._entropy_along(s), s.t)
    wrong = +symbolic._cov(p, logp, list(s.delta))  # sign flipped
    assert not symbolic._is_zero(derived - wrong, s)

"""Sympy derivations that back the closed forms in ``softmax_theory.estimators``.

Each function derives a quantity by differentiating the definition and returns the difference
between the derivation and the closed form used in the numeric code, simplified; a zero proves
the closed form for the given number of actions. See ``docs/theory.md`` for the same steps on
paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class SoftmaxSymbols:
    """Symbols for one state of ``n_actions`` actions: logits z, direction δ, rewards r, time t."""

    z: tuple[sp.Symbol, ...]
    delta: tuple[sp.Symbol, ...]
    r: tuple[sp.Symbol, ...]
    t: sp.Symbol


def symbols(n_actions: int) -> SoftmaxSymbols:
    if n_actions < 2:
        raise ValueError(f"n_actions: need at least 2 actions, got {n_actions}")
    z = sp.symbols(f"z0:{n_actions}", real=True)
    delta = sp.symbols(f"delta0:{n_actions}", real=True)
    r = sp.symbols(f"r0:{n_actions}", real=True)
    return SoftmaxSymbols(z=z, delta=delta, r=r, t=sp.Symbol("t", real=True))


def _softmax(z: tuple[sp.Expr, ...]) -> tuple[list[sp.Expr], list[sp.Expr]]:
    """π and log π of logits z."""
    norm = sum(sp.exp(zi) for zi in z)
    return [sp.exp(zi) / norm for zi in z], [zi - sp.log(norm) for zi in z]


def _expect(p: list[sp.Expr], x: list[sp.Expr]) -> sp.Expr:
    return sum(pi * xi for pi, xi in zip(p, x, strict=True))


def _cov(p: list[sp.Expr], x: list[sp.Expr], y: list[sp.Expr]) -> sp.Expr:
    return _expect(p, [xi * yi for xi, yi in zip(x, y, strict=True)]) - _expect(p, x) * _expect(
        p, y
    )


def _entropy_along(s: SoftmaxSymbols) -> sp.Expr:
    """H(softmax(z + tδ)) as a function of t."""
    p, logp = _softmax(tuple(zi + s.t * di for zi, di in zip(s.z, s.delta, strict=True)))
    return -_expect(p, logp)


def _is_zero(expr: sp.Expr, s: SoftmaxSymbols) -> bool:
    """Decide expr ≡ 0 by rewriting exp(z_i) as positive symbols, where it becomes rational."""
    e = sp.symbols(f"e0:{len(s.z)}", positive=True)
    expr = expr.subs(s.t, 0)
    expr = sp.expand_log(sp.expand(expr), force=True)
    expr = expr.subs({sp.exp(zi): ei for zi, ei in zip(s.z, e, strict=True)})
    expr = expr.subs({zi: sp.log(ei) for zi, ei in zip(s.z, e, strict=True)})
    expr = sp.expand_log(expr, force=True)
    return sp.simplify(sp.cancel(sp.together(expr))) == 0


def first_derivative(n_actions: int = 3) -> bool:
    """d/dt H(softmax(z + tδ))|_{t=0} = −Cov_π(log π, δ)  (Lemma 1, eq. 3)."""
    s = symbols(n_actions)
    derived = sp.diff(_entropy_along(s), s.t)
    p, logp = _softmax(s.z)
    closed = -_cov(p, logp, list(s.delta))
    return _is_zero(derived - closed, s)


def second_derivative(n_actions: int = 3) -> bool:
    """d²/dt² H(softmax(z + tδ))|_{t=0} = −Var_π(δ) − E_π[(δ − δ̄)²(log π − E log π)]  (eq. 4)."""
    s = symbols(n_actions)
    derived = sp.diff(_entropy_along(s), s.t, 2)
    p, logp = _softmax(s.z)
    dbar = _expect(p, list(s.delta))
    gbar = _expect(p, logp)
    u = [di - dbar for di in s.delta]
    closed = -_expect(p, [ui**2 for ui in u]) - _expect(
        p, [ui**2 * (li - gbar) for ui, li in zip(u, logp, strict=True)]
    )
    return _is_zero(derived - closed, s)


def pg_gradient(n_actions: int = 3) -> bool:
    """∂/∂z_a Σ_b π_b r_b = π_a·(r_a − E_π r) = π_a·A_a  (eq. 6)."""
    s = symbols(n_actions)
    p, _ = _softmax(s.z)
    objective = _expect(p, list(s.r))
    baseline = _expect(p, list(s.r))
    return all(
        _is_zero(sp.diff(objective, zi) - pi * (ri - baseline), s)
        for zi, pi, ri in zip(s.z, p, s.r, strict=True)
    )


def npg_direction(n_actions: int = 3) -> bool:
    """The Fisher matrix F = diag(π) − ππᵀ maps A to the PG gradient: F·A = π·A  (eq. 7).

    So z + η·A is a natural-gradient step (A is a solution of F·x = ∇J; the solution is unique
    up to adding a constant, which softmax ignores).
    """
    s = symbols(n_actions)
    p, _ = _softmax(s.z)
    baseline = _expect(p, list(s.r))
    adv = [ri - baseline for ri in s.r]
    fisher_times_adv = [p[a] * adv[a] - p[a] * _expect(p, adv) for a in range(n_actions)]
    return all(_is_zero(fa - p[a] * adv[a], s) for a, fa in enumerate(fisher_times_adv))

"""Steering entropy: a target path H*(t) and the controllers that pick an actuator's strength
each step so that the policy's entropy follows it. Shared by the tabular world and both
language-model engines (the same definitions, the same refusals).

The controlled quantity is the step's ``entropy`` as the run log defines it (the tabular world:
the exact d_π-weighted entropy; the LM engines: the token mean over the step's rollouts at
θ_old). The actuator is the entropy bonus coefficient c (the loss −c·H).

- ``predictive``: before each update, the c whose first-order forecast of the entropy after the
  update equals the path's next value (``solve_coef``), corrected by the last step's forecast
  error (``corrected_target``). The forecast is Lemma 1's first-order ΔH ≈ ∇H·Δθ(c) with the
  optimiser's own update rule Δθ(c) (SGD in the tabular world; Adam's moments and bias
  corrections in the LM engines, ``llm_bridge.probe.optimizer_update``).
- ``pi``: a PI controller on the same actuator, c = Kp·e + Ki·Σe with e = H* − H (as EntroPIC,
  arXiv 2511.15248, which drives sample weights; here the bonus coefficient).

The paths: ``constant`` (H* = L from ``start``), ``linear`` and ``exp`` (from H₀ at ``start``
to L at the run's last step), ``file`` (a CSV of step, H*). L = ``level``·H₀ when
``relative``, else ``level`` nats; H₀ is the entropy the run starts at (step 0).
"""

from __future__ import annotations

import csv
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from softmax_theory.inputs import Domain, SettingError, check_domains
from softmax_theory.registry import parse_choice


class Controller(str, enum.Enum):
    NONE = "none"
    PREDICTIVE = "predictive"
    PI = "pi"


class Actuator(str, enum.Enum):
    """What a controller sets: the entropy bonus's coefficient (the loss −c·H), or KL-Cov's
    coefficient on its selected tokens (``ppo_kl_coef``: the loss + k·|log π − log π_old|)."""

    ENTROPY_COEFF = "entropy_coeff"
    PPO_KL_COEF = "ppo_kl_coef"


class PathKind(str, enum.Enum):
    CONSTANT = "constant"
    LINEAR = "linear"
    EXP = "exp"
    FILE = "file"


def _help(text: str, domain: Domain | None = None) -> dict:
    return {"help": text, **({"domain": domain} if domain else {})}


@dataclass(frozen=True)
class ControlConfig:
    """Entropy control: the controller, its target path and its gains; the only home of their
    defaults and domains."""

    entropy_control: Controller = field(
        default=Controller.NONE,
        metadata=_help("steer H along a path: none, predictive (the forecast) or pi"),
    )
    control_actuator: Actuator = field(
        default=Actuator.ENTROPY_COEFF,
        metadata=_help(
            "what the controller sets: entropy_coeff (the bonus) or ppo_kl_coef (KL-Cov's "
            "coefficient; loss_mode kl_cov)"
        ),
    )
    control_path: PathKind = field(
        default=PathKind.CONSTANT,
        metadata=_help("the target path: constant, linear, exp or file (--control-path-file)"),
    )
    control_level: float = field(
        default=0.5,
        metadata=_help("the path's level L: × H₀ (--control-relative) or nats", Domain(gt=0)),
    )
    control_relative: bool = field(
        default=True, metadata=_help("the level is a share of the starting entropy H₀")
    )
    control_start: int = field(
        default=0,
        metadata=_help("the first step the path holds (before: no control)", Domain(ge=0)),
    )
    control_path_file: str | None = field(
        default=None, metadata=_help("CSV of step,target (every step of the run, in nats)")
    )
    control_coef_max: float = field(
        default=1.0, metadata=_help("the largest bonus coefficient a controller sets", Domain(gt=0))
    )
    control_coef_min: float = field(
        default=0.0,
        metadata=_help(
            "the smallest coefficient (below 0: an entropy penalty, to lower H)", Domain()
        ),
    )
    control_error_gain: float = field(
        default=1.0,
        metadata=_help(
            "predictive: share of the last forecast error corrected", Domain(ge=0, le=1)
        ),
    )
    control_kp: float = field(
        default=0.05, metadata=_help("pi: proportional gain (coefficient per nat)", Domain(ge=0))
    )
    control_ki: float = field(
        default=0.01, metadata=_help("pi: integral gain (coefficient per nat·step)", Domain(ge=0))
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "entropy_control",
            parse_choice(Controller, self.entropy_control, "entropy_control"),
        )
        object.__setattr__(
            self, "control_path", parse_choice(PathKind, self.control_path, "control_path")
        )
        object.__setattr__(
            self,
            "control_actuator",
            parse_choice(Actuator, self.control_actuator, "control_actuator"),
        )
        check_domains(self)
        if self.control_coef_min >= self.control_coef_max:
            raise SettingError("control_coef_min", "must be below control_coef_max")
        if self.control_actuator is Actuator.PPO_KL_COEF and self.control_coef_min < 0:
            raise SettingError(
                "control_coef_min", "KL-Cov's coefficient cannot be negative (ppo_kl_coef ≥ 0)"
            )
        if (self.control_path is PathKind.FILE) != (self.control_path_file is not None):
            raise SettingError("control_path_file", "is given exactly when control_path is file")

    @property
    def on(self) -> bool:
        return self.entropy_control is not Controller.NONE


def check_control(
    cfg: ControlConfig,
    entropy_coeff: float,
    entropy_target: float | None,
    loss_mode: str | None = None,
) -> None:
    """A controller sets its actuator's coefficient itself: a fixed bonus coefficient or the
    adaptive rule beside a bonus controller is refused, naming the setting; an actuator the loss
    does not have (``ppo_kl_coef`` without ``loss_mode`` kl_cov; ``loss_mode`` None: the tabular
    world, which steers the bonus only) is refused naming ``control_actuator``."""
    if not cfg.on:
        return
    if cfg.control_actuator is Actuator.PPO_KL_COEF:
        if loss_mode is None:
            raise SettingError(
                "control_actuator", "the tabular world steers the entropy bonus only"
            )
        if loss_mode != "kl_cov":
            raise SettingError(
                "control_actuator",
                f"ppo_kl_coef is KL-Cov's coefficient; the loss is {loss_mode} (use loss_mode "
                "kl_cov, or the actuator entropy_coeff)",
            )
        return
    if entropy_coeff > 0:
        raise SettingError(
            "entropy_coeff", "a controller sets the coefficient; leave entropy_coeff at 0"
        )
    if entropy_target is not None:
        raise SettingError("entropy_target", "the adaptive rule and a controller both set it")


def read_path_file(path: str | Path, steps: int) -> tuple[float, ...]:
    """The targets of a CSV of ``step,target`` rows (a header row is allowed) for steps
    0…``steps`` (the step after the last is the last step's aim): every step once, in order.
    A gap, a repeat, a value that is not a number or fewer steps than the run is refused in one
    line naming the file and the row."""
    file = Path(path)
    if not file.is_file():
        raise SettingError("control_path_file", f"{file} is not a file")
    targets: list[float] = []
    with file.open(newline="") as f:
        for i, row in enumerate(csv.reader(f), start=1):
            if not row or (i == 1 and not _is_number(row[0])):
                continue
            if len(row) < 2 or not (_is_number(row[0]) and _is_number(row[1])):
                raise SettingError("control_path_file", f"{file} row {i}: not step,target")
            step, value = int(float(row[0])), float(row[1])
            if step != len(targets):
                raise SettingError(
                    "control_path_file",
                    f"{file} row {i}: step {step} where {len(targets)} was due (a gap or repeat)",
                )
            targets.append(value)
    if len(targets) < steps:
        raise SettingError(
            "control_path_file", f"{file} has {len(targets)} steps; the run has {steps}"
        )
    return tuple(targets)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass(frozen=True)
class EntropyPath:
    """H*(t) for one run: built once H₀ is known (``target_path``)."""

    kind: PathKind
    h0: float
    level: float  # L in nats
    start: int
    steps: int
    points: tuple[float, ...] = ()

    def target(self, step: int) -> float | None:
        """H* at ``step`` (None before ``start``: no control there)."""
        if self.kind is PathKind.FILE:
            return self.points[min(step, len(self.points) - 1)]
        if step < self.start:
            return None
        if self.kind is PathKind.CONSTANT:
            return self.level
        span = max(self.steps - 1 - self.start, 1)
        frac = min((step - self.start) / span, 1.0)
        if self.kind is PathKind.LINEAR:
            return self.h0 + (self.level - self.h0) * frac
        return self.h0 * (self.level / self.h0) ** frac


def target_path(cfg: ControlConfig, h0: float, steps: int, max_entropy: float) -> EntropyPath:
    """The run's path from its starting entropy ``h0``; every target must lie in
    (0, ``max_entropy``] (log V: the most entropy a softmax over V choices has)."""
    points: tuple[float, ...] = ()
    if cfg.control_path is PathKind.FILE:
        points = read_path_file(cfg.control_path_file, steps)
        values: Sequence[float] = points
    else:
        level = cfg.control_level * h0 if cfg.control_relative else cfg.control_level
        values = (level,)
    for v in values:
        if not 0 < v <= max_entropy:
            raise SettingError(
                "control_level" if not points else "control_path_file",
                f"a target of {v:.4g} nats is outside (0, log V = {max_entropy:.4g}]",
            )
    level = values[0] if not points else points[-1]
    return EntropyPath(cfg.control_path, h0, level, cfg.control_start, steps, points)


def corrected_target(target: float, last_error: float | None, gain: float) -> float:
    """The value the forecast aims at: the path's next value less ``gain`` × the last step's
    forecast error (measured − forecast), on the view that the forecast's bias persists."""
    return target - gain * (last_error or 0.0)


def solve_coef(
    forecast: Callable[[float], float],
    want: float,
    coef_min: float,
    coef_max: float,
    iters: int = 40,
    ftol: float = 1e-9,
) -> float:
    """The coefficient c ∈ [``coef_min``, ``coef_max``] whose forecast equals ``want`` (to
    ``ftol`` nats), by Brent's method on the bracket (``scipy.optimize.brentq``).

    The forecast is taken monotone in c, rising or falling as its values at the bounds say: the
    bonus raises entropy; KL-Cov's coefficient restrains the update, which raises entropy where
    the update lowers it and lowers it where the update raises it. Where ``want`` lies beyond
    the forecasts at both bounds, the controller saturates at the bound nearer to it. The
    search stops at the first forecast within ``ftol`` of ``want``, or with the root bracketed
    to (coef_max − coef_min)·2⁻ⁱᵗᵉʳˢ, as ``iters`` halvings of ``bisect_coef`` (the slow
    reference) would place it. Each forecast is one pass of the optimiser's rule over the
    parameters; on the testbed a solve takes about 9 of them, against the bisection's 42. A
    forecast that is not finite is refused."""
    bound, lo, hi = _saturated(forecast, want, coef_min, coef_max)
    if bound is not None:
        return bound
    from scipy.optimize import brentq

    known = {coef_min: lo, coef_max: hi}  # brentq asks for the bounds again: no new forecast

    def miss(c: float) -> float:
        value = known[c] if c in known else _finite(forecast(c), c) - want
        if abs(value) <= ftol:
            raise _Landed(c)
        return value

    try:
        return float(
            brentq(
                miss,
                coef_min,
                coef_max,
                xtol=(coef_max - coef_min) * 2.0**-iters,
                rtol=4 * np.finfo(float).eps,
                maxiter=4 * iters,
            )
        )
    except _Landed as landed:
        return landed.coef


class _Landed(Exception):
    """A forecast within ``ftol`` of the aim: the search ends there."""

    def __init__(self, coef: float):
        super().__init__(coef)
        self.coef = coef


def _saturated(
    forecast: Callable[[float], float], want: float, coef_min: float, coef_max: float
) -> tuple[float | None, float, float]:
    """The bound the controller saturates at (None: the bounds bracket ``want``), and the
    forecast's misses at the two bounds."""
    lo = _finite(forecast(coef_min), coef_min) - want
    hi = _finite(forecast(coef_max), coef_max) - want
    if hi >= lo:  # rising (or flat)
        bound = coef_min if lo >= 0 else coef_max if hi <= 0 else None
    else:
        bound = coef_min if lo <= 0 else coef_max if hi >= 0 else None
    return bound, lo, hi


def _finite(value: float, c: float) -> float:
    if not math.isfinite(value):
        raise FloatingPointError(f"the entropy forecast at coefficient {c!r} is {value!r}")
    return value


def bisect_coef(
    forecast: Callable[[float], float],
    want: float,
    coef_min: float,
    coef_max: float,
    iters: int = 40,
) -> float:
    """``solve_coef`` by plain bisection: the slow reference (``iters`` + 2 forecasts). The
    root lies within (coef_max − coef_min)·2⁻ⁱᵗᵉʳˢ of the value returned."""
    bound, lo, hi = _saturated(forecast, want, coef_min, coef_max)
    if bound is not None:
        return bound
    rising = hi > lo
    lo, hi = coef_min, coef_max
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if (forecast(mid) < want) == rising:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class ControlState:
    """What a controller carries between steps: the path, the step index, the last step's
    forecast of the entropy after it, and the PI integral."""

    path: EntropyPath
    step: int = 0
    pred_after: float | None = None
    integral: float = 0.0


def pi_coef(error: float, integral: float, cfg: ControlConfig) -> float:
    """PI control of the bonus: c = clip(Kp·e + Ki·Σe, c_min, c_max), e = H* − H (positive
    when entropy is below the path)."""
    c = cfg.control_kp * error + cfg.control_ki * integral
    return min(max(c, cfg.control_coef_min), cfg.control_coef_max)


@dataclass(frozen=True)
class StepAims:
    """What a controller knows as step ``step`` starts at its measured ``entropy``: the last
    step's forecast ``error`` (measured − forecast), the path ``now`` and the corrected
    ``aim`` for the step's end (None where the path does not hold), and PI's coefficient
    ``pi`` for the whole step (None unless the controller is PI and the path holds now)."""

    step: int
    entropy: float
    error: float | None
    now: float | None
    aim: float | None
    pi: float | None


def step_aims(state: ControlState, step: int, entropy: float, cfg: ControlConfig) -> StepAims:
    """The aims of step ``step``: one definition for the tabular world and both engines."""
    error = None if state.pred_after is None else entropy - state.pred_after
    now, aim = state.path.target(step), state.path.target(step + 1)
    if aim is not None:
        aim = corrected_target(aim, error, cfg.control_error_gain)
    pi = None
    if cfg.entropy_control is Controller.PI and now is not None:
        pi = pi_coef(now - entropy, state.integral + now - entropy, cfg)
    return StepAims(step, entropy, error, now, aim, pi)


def step_end(
    state: ControlState, aims: StepAims, coefs: Sequence[float], pred_after: float | None
) -> tuple[dict[str, float], ControlState]:
    """The step's ``control/*`` keys (``coefs``: the coefficients it applied) and the state
    carried to the next step (its forecast, the PI integral over the steps the path held)."""
    coef = float(np.mean(coefs)) if coefs else 0.0
    target = state.path.target(aims.step + 1)
    keys = control_keys(aims.now, target, coef, pred_after, aims.error)
    integral = state.integral + (0.0 if aims.now is None else aims.now - aims.entropy)
    return keys, ControlState(state.path, aims.step + 1, pred_after, integral)


def directional_change(h: Callable[[np.ndarray], float], z: np.ndarray, v: np.ndarray) -> float:
    """∇h(z)·v, the first-order change of ``h`` along ``v``, by a central difference scaled so
    that the largest coordinate moves by 1e-5 (float64: error ~1e-10 relative)."""
    scale = float(np.max(np.abs(v)))
    if scale == 0:
        return 0.0
    eps = 1e-5 / scale
    return (h(z + eps * v) - h(z - eps * v)) / (2 * eps)


def control_keys(
    now: float | None,
    target: float | None,
    coef: float,
    pred_after: float | None,
    error: float | None,
) -> dict[str, float]:
    """The run log's ``control/*`` keys of one step: ``now`` the path at this step (the
    tracking error is ``entropy`` − it), ``target`` at the next (what the step aims at),
    ``coef`` the mean coefficient over its updates, ``pred_after`` the forecast of the entropy
    after it, ``error`` the last step's forecast error (a value the step has not is left
    out)."""
    keys = {"control/coef": coef}
    for k, v in (("now", now), ("target", target), ("pred_after", pred_after), ("error", error)):
        if v is not None:
            keys[f"control/{k}"] = v
    return keys


__all__ = [
    "Actuator",
    "ControlConfig",
    "ControlState",
    "Controller",
    "EntropyPath",
    "PathKind",
    "StepAims",
    "bisect_coef",
    "check_control",
    "control_keys",
    "corrected_target",
    "directional_change",
    "pi_coef",
    "read_path_file",
    "solve_coef",
    "step_aims",
    "step_end",
    "target_path",
]

"""Scene-adaptive reference filling: learn, from the target's own known pixels, how this scene's
reference relates to its target, and fill with what was learned.

The target's known pixels are paired examples of the reference-to-target relation for this very
scene. :func:`simulated_holes` moves the target's own hole geometry (SLC-off stripes, cloud shapes)
onto known ground by whole-pixel shifts; every candidate fill (:func:`candidate_fills`) is run with
those pixels hidden as well, and their truth is known. Two disjoint shifts give a fit set and a
held-out set. :func:`fit_combination` fits, per band, a ridge-regularised linear combination of the
candidates (plus an intercept) on the fit set; the held-out set then decides between that
combination and the best single candidate (chosen on the fit set), and the winner is refitted on
both sets and applied to the real holes. With too few examples (a tiny or almost fully known
array), :data:`DEFAULT_FILL` is used alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.reference.fills import candidate_fills

#: the candidate used alone when there are too few examples to learn from (chosen on validation).
DEFAULT_FILL = "local_regression"
#: fewest simulated-hole pixels (per set) to fit on; fewer falls back to DEFAULT_FILL.
MIN_EXAMPLES = 64
#: ridge on the combination weights (relative to the mean squared candidate value).
COMBINATION_RIDGE = 1e-3
#: px: the shifts that move the hole geometry onto known ground (fit set, held-out set).
SHIFTS = ((0, 7), (7, 0), (0, -7), (-7, 0))


@dataclass
class AdaptiveReport:
    """What the adaptive fill chose for one array (JSON-able via ``vars``)."""

    choice: str = DEFAULT_FILL
    examples: int = 0
    heldout_rmse: dict[str, float] = field(default_factory=dict)
    weights: list[list[float]] | None = None


def simulated_holes(hole: np.ndarray, usable: np.ndarray, shifts: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Union of ``hole`` (H, W) shifted by each (dy, dx) px, restricted to ``usable`` pixels."""
    out = np.zeros_like(hole)
    H, W = hole.shape
    for dy, dx in shifts:
        moved = np.zeros_like(hole)
        moved[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
            hole[max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
        out |= moved
    return out & usable


def _design(preds: dict[str, np.ndarray], where: np.ndarray, band: int) -> np.ndarray:
    cols = [p[band][where] for p in preds.values()]
    return np.stack(cols + [np.ones_like(cols[0])], axis=1).astype(np.float64)


def fit_combination(preds: dict[str, np.ndarray], truth: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(C, K + 1) weights (K candidates + intercept), per band, ridge least squares at ``where``."""
    weights = []
    for c in range(truth.shape[0]):
        x, y = _design(preds, where, c), truth[c][where].astype(np.float64)
        reg = COMBINATION_RIDGE * float((x[:, :-1] ** 2).mean()) * x.shape[0] * np.eye(x.shape[1])
        reg[-1, -1] = 0.0
        weights.append(np.linalg.solve(x.T @ x + reg, x.T @ y))
    return np.asarray(weights)


def apply_combination(preds: dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """(C, H, W) sum of the candidates by ``weights`` (:func:`fit_combination`)."""
    stack = np.stack(list(preds.values()))  # (K, C, H, W)
    out = np.einsum("kchw,ck->chw", stack, weights[:, :-1]) + weights[:, -1][:, None, None]
    return out.astype(np.float32)


def _rmse(pred: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred[:, where] - truth[:, where]) ** 2)))


def adaptive_fill(target: np.ndarray, hole: np.ndarray, reference: np.ndarray,
                  ref_valid: np.ndarray) -> tuple[np.ndarray, AdaptiveReport]:
    """Fill ``hole`` from the reference as learned on this array's known pixels (see the module).
    Returns (C, H, W) float32 (NaN where the reference is invalid under the hole) and the report."""
    both = ~hole & ref_valid
    half = len(SHIFTS) // 2
    fit_px = simulated_holes(hole, both, SHIFTS[:half])
    held_px = simulated_holes(hole, both, SHIFTS[half:]) & ~fit_px
    report = AdaptiveReport()
    preds = candidate_fills(target, hole, reference, ref_valid)
    if min(fit_px.sum(), held_px.sum()) < MIN_EXAMPLES:
        return preds[DEFAULT_FILL], report
    sim = candidate_fills(target, hole | fit_px | held_px, reference, ref_valid)
    ok = np.isfinite(np.stack(list(sim.values()))).all(axis=(0, 1))
    fit_px, held_px = fit_px & ok, held_px & ok
    report.examples = int(fit_px.sum() + held_px.sum())
    if min(fit_px.sum(), held_px.sum()) < MIN_EXAMPLES:
        return preds[DEFAULT_FILL], report
    best = min(sim, key=lambda k: _rmse(sim[k], target, fit_px))
    weights = fit_combination(sim, target, fit_px)
    report.heldout_rmse = {k: _rmse(v, target, held_px) for k, v in sim.items()}
    report.heldout_rmse["combination"] = _rmse(apply_combination(sim, weights), target, held_px)
    if report.heldout_rmse["combination"] < report.heldout_rmse[best]:
        weights = fit_combination(sim, target, fit_px | held_px)
        report.choice, report.weights = "combination", weights.round(4).tolist()
        out = apply_combination(preds, weights)
        return np.where(hole[None], out, target).astype(np.float32), report
    report.choice = best
    return preds[best], report

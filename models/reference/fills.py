"""Classical reference-guided fills over arrays.

Every fill takes ``target`` (C, H, W) float32 in [0, 1] (values under ``hole`` are ignored),
``hole`` (H, W) bool (True = missing in the target), ``reference`` (C, H, W) float32 in [0, 1]
and ``ref_valid`` (H, W) bool, and returns (C, H, W) float32: a prediction of the target at every
pixel where the reference is valid, NaN where it is not (the caller falls back there). Known target
pixels are returned as they are. Distances and window sizes are in pixels.

- :func:`reference_harmonic`: ``reference + harmonic(target - reference)``: the reference's texture
  with the smooth between-date difference carried in from the hole's border (gradient-domain
  cloning in its simplest form). Best when the land did not change between the dates.
- :func:`local_regression`: per pixel, ``a * reference + b`` with ``a, b`` least squares over the
  pixels known on both dates in a ``2 radius + 1`` window (the classical local linear histogram
  matching of USGS's SLC-off fill), then its residual carried in harmonically. Handles gain and
  offset changes (phenology, another sensor) that vary across the scene.
- :func:`similar_pixels`: in the manner of NSPI (Chen et al. 2011): pixels of the window that look
  like the hole pixel on the reference date ("similar pixels") tell how it changed: the prediction
  is the reference value plus their weighted mean change (temporal) and their weighted mean target
  value (spatial). Handles changes that follow land cover (a field that was harvested).
"""
from __future__ import annotations

import cv2
import numpy as np

#: unit^2 added to the reference's local variance: a window with flat reference falls back to its mean.
REGRESSION_RIDGE = 1e-4
#: fewest pixels known on both dates for a local fit; fewer falls back to the whole array's fit.
MIN_FIT_PIXELS = 24


def harmonic(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Harmonic (membrane) fill of ``values`` (C, H, W) from the ``known`` (H, W) pixels."""
    import torch

    from models.networks import smooth_fill

    k = torch.from_numpy(known.astype(np.float32))[None, None]
    x = torch.from_numpy(np.where(known, values, 0).astype(np.float32))[None]
    with torch.no_grad():
        return smooth_fill(x, k)[0].numpy()


def _box(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum of ``a`` (H, W) float64 over the (2 radius + 1)^2 window around each pixel (zeros outside)."""
    k = 2 * radius + 1
    return cv2.boxFilter(a, cv2.CV_64F, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)


def _with_nan(pred: np.ndarray, target: np.ndarray, hole: np.ndarray, ref_valid: np.ndarray) -> np.ndarray:
    out = np.where(hole[None], pred, target).astype(np.float32)
    out[:, hole & ~ref_valid] = np.nan
    return out


def reference_harmonic(target: np.ndarray, hole: np.ndarray, reference: np.ndarray,
                       ref_valid: np.ndarray) -> np.ndarray:
    """``reference + harmonic(target - reference)`` inside the hole (see the module)."""
    both = ~hole & ref_valid
    if not both.any():
        return _with_nan(np.full_like(target, np.nan), target, hole, np.zeros_like(hole))
    diff = harmonic(np.where(both[None], target - reference, 0.0), both)
    return _with_nan(reference + diff, target, hole, ref_valid)


def local_regression(target: np.ndarray, hole: np.ndarray, reference: np.ndarray, ref_valid: np.ndarray,
                     radius: int = 15, residual: bool = True) -> np.ndarray:
    """Windowed least squares ``target ~ a reference + b`` (see the module); ``residual``: carry the
    fit's residual on the known pixels into the hole harmonically."""
    both = ~hole & ref_valid
    if not both.any():
        return _with_nan(np.full_like(target, np.nan), target, hole, np.zeros_like(hole))
    w = both.astype(np.float64)
    n = _box(w, radius)
    pred = np.empty_like(target)
    for c in range(target.shape[0]):
        x, y = reference[c].astype(np.float64) * w, np.where(both, target[c], 0).astype(np.float64)
        sx, sy = _box(x, radius), _box(y, radius)
        sxx, sxy = _box(x * reference[c], radius), _box(x * np.where(both, target[c], 0), radius)
        nn = np.maximum(n, 1.0)
        var = sxx - sx * sx / nn
        a = (sxy - sx * sy / nn) / (var + nn * REGRESSION_RIDGE)
        b = (sy - a * sx) / nn
        xs, ys = reference[c][both].astype(np.float64), target[c][both].astype(np.float64)
        ga = np.cov(xs, ys, bias=True)[0, 1] / (xs.var() + REGRESSION_RIDGE) if xs.size > 1 else 1.0
        gb = ys.mean() - ga * xs.mean()
        few = n < MIN_FIT_PIXELS
        a, b = np.where(few, ga, a), np.where(few, gb, b)
        pred[c] = (a * reference[c] + b).astype(np.float32)
    if residual:
        pred = pred + harmonic(np.where(both[None], target - pred, 0.0), both)
    return _with_nan(pred, target, hole, ref_valid)


def _offsets(radius: int, step: int) -> list[tuple[int, int]]:
    """Window offsets: every ``step``-th row and column of the window, plus the 8 neighbours."""
    grid = {(dy, dx) for dy in range(-radius, radius + 1, step) for dx in range(-radius, radius + 1, step)}
    grid |= {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    grid.discard((0, 0))
    return sorted(grid)


def similar_pixel_fills(target: np.ndarray, hole: np.ndarray, reference: np.ndarray, ref_valid: np.ndarray,
                        radius: int = 10, similarity: float = 0.5, step: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """NSPI-style predictions from similar pixels (see the module), (temporal, spatial). A window
    pixel ``q`` known on both dates weighs ``exp(-(d / h)^2) / (1 + |q - p| / radius)`` with ``d``
    the RMS difference of ``p`` and ``q`` on the reference over bands and ``h = similarity x`` the
    reference's standard deviation; the window is sampled every ``step`` px (and the 8 neighbours).
    Temporal: the reference value plus the similar pixels' weighted mean change; spatial: their
    weighted mean target value. Hole pixels with no such neighbour take :func:`reference_harmonic`."""
    both = ~hole & ref_valid
    todo = hole & ref_valid
    base = reference_harmonic(target, hole, reference, ref_valid)
    if not todo.any() or not both.any():
        return base, base.copy()
    h = similarity * max(float(reference[:, ref_valid].std()), 1e-3)
    ys, xs = np.nonzero(todo)
    H, W = hole.shape
    rp = reference[:, ys, xs]
    change, value = np.zeros((target.shape[0], ys.size)), np.zeros((target.shape[0], ys.size))
    den = np.zeros(ys.size)
    known_t = np.where(both[None], target, 0.0)
    known_d = np.where(both[None], target - reference, 0.0)
    for dy, dx in _offsets(radius, step):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
        qy, qx = np.clip(qy, 0, H - 1), np.clip(qx, 0, W - 1)
        ok = inside & both[qy, qx]
        d2 = ((reference[:, qy, qx] - rp) ** 2).mean(axis=0) / (h * h)
        wq = np.where(ok, np.exp(-d2) / (1.0 + np.hypot(dy, dx) / radius), 0.0)
        change += wq * known_d[:, qy, qx]
        value += wq * known_t[:, qy, qx]
        den += wq
    have = den > 1e-8
    temporal, spatial = base.copy(), base.copy()
    temporal[:, ys[have], xs[have]] = (rp[:, have] + change[:, have] / den[have]).astype(np.float32)
    spatial[:, ys[have], xs[have]] = (value[:, have] / den[have]).astype(np.float32)
    return temporal, spatial


def similar_pixels(target: np.ndarray, hole: np.ndarray, reference: np.ndarray, ref_valid: np.ndarray) -> np.ndarray:
    """The temporal prediction of :func:`similar_pixel_fills` (the NSPI-style reference fill)."""
    return similar_pixel_fills(target, hole, reference, ref_valid)[0]


def candidate_fills(target: np.ndarray, hole: np.ndarray, reference: np.ndarray,
                    ref_valid: np.ndarray) -> dict[str, np.ndarray]:
    """Every classical reference fill of the array (the similar-pixel pass shared by its two
    predictions): name -> (C, H, W), NaN where the reference is invalid under the hole."""
    temporal, spatial = similar_pixel_fills(target, hole, reference, ref_valid)
    return {"reference_harmonic": reference_harmonic(target, hole, reference, ref_valid),
            "local_regression": local_regression(target, hole, reference, ref_valid),
            "similar_temporal": temporal, "similar_spatial": spatial}

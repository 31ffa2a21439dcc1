"""The mask library (mask: uint8/bool, 1 = missing, every array here is (H, W) or (M, H, W)).

Kinds: ``qd_imd`` (real QD-IMD hand-drawn masks), ``irregular`` (procedural strokes),
``slc_off`` (Landsat 7 scan-gap generator fitted to real gaps), ``slc_off_real`` (crops of the
real gap masks), ``cloud`` (real QA cloud/shadow bits), ``nodata`` (real scene nodata).
"""
from __future__ import annotations

import numpy as np

#: Evaluation hole-ratio bins [low, high) as fractions: 10-20 %, ..., 50-60 %.
RATIO_BINS: tuple[tuple[float, float], ...] = ((0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))


class MaskError(ValueError):
    """Bad mask input (empty folder, wrong size, ambiguous polarity, unfillable bin, ...)."""


def hole_ratio(masks: np.ndarray) -> np.ndarray | float:
    """Fraction of missing pixels: (H, W) -> float, (M, H, W) -> (M,) float32."""
    masks = np.asarray(masks)
    if masks.ndim == 2:
        return float(masks.astype(bool).mean())
    return masks.reshape(len(masks), -1).astype(bool).mean(axis=1).astype(np.float32)


def ratio_bin(ratio: np.ndarray | float, bins=RATIO_BINS) -> np.ndarray:
    """Index of the bin [low, high) holding each ratio, -1 outside every bin."""
    r = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    out = np.full(r.shape, -1, np.int64)
    for i, (lo, hi) in enumerate(bins):
        out[(r >= lo) & (r < hi)] = i
    return out

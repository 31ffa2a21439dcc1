"""Masks from REAL rasters: gap masks (255 = hole), nodata of bundled scenes, QA cloud bits.

All functions return bool arrays, True = missing. Crops use an integral image, so the hole
ratio of every candidate window is known at once and windows are drawn per ratio bin.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import rasterio

from pipeline.masks import MaskError
from pipeline.qa import QAKind, qa_cloud_mask
from pipeline.scenes import CATALOG_DIR, load_catalog, read_scene


def read_gap_mask(path: str | Path, *, resolution_m: float | None = 30.0) -> np.ndarray:
    """A real gap-mask GeoTIFF (uint8, 255 = hole, 0 = data) -> bool, resampled (nearest) to
    ``resolution_m`` when its pixels differ (None keeps the native grid)."""
    with rasterio.open(path) as src:
        a = src.read(1)
        res = abs(src.transform.a)
    values = set(np.unique(a).tolist())
    if not values <= {0, 255}:
        raise MaskError(f"{path}: gap mask must hold only 0 and 255 (255 = hole), found {sorted(values)[:6]}")
    mask = a == 255
    if resolution_m and abs(res - resolution_m) > 1e-6:
        f = res / resolution_m
        mask = cv2.resize(mask.astype(np.uint8), None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


def real_gap_masks() -> list[np.ndarray]:
    """The bundled real SLC-off gap masks at 30 m (the clip's 1-px zero border trimmed)."""
    out = []
    for entry in load_catalog().values():
        if entry.gap_mask and entry.role in ("slc_off", "slc_off_mask"):
            m = read_gap_mask(entry.path(entry.gap_mask))
            if entry.id == "LE07_039028_20100702_SLCOFF":
                m = m[:-1, :-1]  # zero-padded clip border, not a gap (SOURCES.md 4a)
            out.append(m)
    return out


def qa_raster_mask(path: str | Path, kind: QAKind, **flags) -> np.ndarray:
    """A real QA raster -> cloud (and shadow ...) mask, see :func:`pipeline.qa.qa_cloud_mask`."""
    with rasterio.open(path) as src:
        return qa_cloud_mask(src.read(1), kind, **flags)


def real_cloud_masks() -> list[np.ndarray]:
    """Cloud + shadow masks from every bundled QA raster (fill excluded: fill is 'nodata')."""
    out = []
    for entry in load_catalog().values():
        if entry.qa and entry.qa_kind:
            out.append(qa_raster_mask(entry.path(entry.qa), entry.qa_kind, shadow=True, fill=False))
    for path in sorted((CATALOG_DIR / "scenes" / "landsat_more" / "stactools_landsat").glob("*QA_PIXEL.TIF")):
        out.append(qa_raster_mask(path, "c2_qa_pixel", shadow=True, fill=False))
    return out


def real_nodata_masks() -> list[np.ndarray]:
    """Scene nodata / fill (valid == False) of the bundled RGB scenes that have any."""
    out = []
    for entry in load_catalog().values():
        if entry.role in ("train", "test", "holdout"):  # SLC-off fill is the slc_off_real kind
            invalid = ~read_scene(entry).valid
            if invalid.mean() > 0.01:
                out.append(invalid)
    return out


def window_ratios(mask: np.ndarray, size: int, stride: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hole ratio of every ``size`` window on a ``stride`` grid: (rows, cols, ratios)."""
    h, w = mask.shape
    if h < size or w < size:
        return np.empty(0, int), np.empty(0, int), np.empty(0)
    integ = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)
    rows = np.arange(0, h - size + 1, stride)
    cols = np.arange(0, w - size + 1, stride)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    r, c = r.ravel(), c.ravel()
    s = integ[r + size, c + size] - integ[r, c + size] - integ[r + size, c] + integ[r, c]
    return r, c, s / float(size * size)


def crops_in_range(sources: list[np.ndarray], n: int, size: int, ratio: tuple[float, float],
                   rng: np.random.Generator, stride: int = 8, kind: str = "real",
                   augment: bool = True) -> np.ndarray:
    """``n`` random ``size`` crops (with a random rot90/flip if ``augment``) of ``sources``
    whose hole ratio lies in [low, high); :class:`MaskError` if no window qualifies."""
    cands = []
    for i, m in enumerate(sources):
        r, c, q = window_ratios(m, size, stride)
        keep = (q >= ratio[0]) & (q < ratio[1])
        cands += [(i, rr, cc) for rr, cc in zip(r[keep], c[keep])]
    if n and not cands:
        raise MaskError(f"no {size}px window of the real {kind} masks has a hole ratio in "
                        f"[{ratio[0]:.0%}, {ratio[1]:.0%}): this bin cannot be filled for kind {kind!r}")
    out = np.empty((n, size, size), np.uint8)
    for k, j in enumerate(rng.integers(0, len(cands), n) if n else []):
        i, r0, c0 = cands[j]
        crop = sources[i][r0:r0 + size, c0:c0 + size]
        aug = int(rng.integers(0, 8)) if augment else 0
        crop = np.rot90(crop, aug % 4)
        out[k] = crop[:, ::-1] if aug >= 4 else crop
    return out

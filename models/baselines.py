"""Classical fills scored by the same harness as the model (float RGB in [0, 1], (3, H, W)).

- ``telea``: OpenCV ``cv2.inpaint(..., cv2.INPAINT_TELEA)``, radius ``INPAINT_RADIUS`` px.
- ``ns``: OpenCV Navier-Stokes ``cv2.INPAINT_NS``, same radius.
- ``gdal``: GDAL FillNodata via ``rasterio.fill.fillnodata`` (inverse-distance interpolation
  from the hole's edge, ``max_search_distance`` = the image diagonal so every hole is filled,
  no smoothing iterations).
- ``harmonic``: the prefill the residual G2 starts from (:func:`models.networks.smooth_fill`,
  push-pull then Jacobi sweeps, no network): scoring it beside the model shows what learning adds.
OpenCV runs per band on uint16 (its Telea gives garbage on float32 input); quantisation
error <= 8e-6, far below any reported difference.
"""
from __future__ import annotations

import cv2
import numpy as np

INPAINT_RADIUS = 3.0
BASELINES = ("telea", "ns", "gdal", "harmonic")


def _check(rgb01: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb01 = np.asarray(rgb01, np.float32)
    mask = np.asarray(mask).astype(bool)
    if rgb01.ndim != 3 or mask.shape != rgb01.shape[1:]:
        raise ValueError(f"expected rgb (C, H, W) and mask (H, W); got {rgb01.shape} and {mask.shape}")
    return rgb01, mask


def _opencv(rgb01: np.ndarray, mask: np.ndarray, flag: int) -> np.ndarray:
    rgb01, mask = _check(rgb01, mask)
    m8 = mask.astype(np.uint8)
    u16 = np.rint(rgb01.clip(0, 1) * 65535).astype(np.uint16)
    out = np.stack([cv2.inpaint(np.ascontiguousarray(b), m8, INPAINT_RADIUS, flag) for b in u16])
    return out.astype(np.float32) / 65535


def telea(rgb01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _opencv(rgb01, mask, cv2.INPAINT_TELEA)


def navier_stokes(rgb01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _opencv(rgb01, mask, cv2.INPAINT_NS)


def gdal_fillnodata(rgb01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from rasterio.fill import fillnodata  # imported here: model code runs where rasterio is absent (GPU image)

    rgb01, mask = _check(rgb01, mask)
    valid = (~mask).astype(np.uint8)  # GDAL convention: 0 = nodata
    dist = float(np.hypot(*mask.shape))
    if not valid.any():
        raise ValueError("GDAL fillnodata needs at least one valid pixel")
    return np.stack([fillnodata(b.copy(), mask=valid, max_search_distance=dist, smoothing_iterations=0)
                     for b in rgb01]).clip(0, 1)


def harmonic(rgb01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    from models.networks import smooth_fill

    rgb01, mask = _check(rgb01, mask)
    known = torch.from_numpy((~mask).astype(np.float32))[None, None]
    with torch.no_grad():
        out = smooth_fill(torch.from_numpy(rgb01)[None] * known, known)
    return out[0].numpy().clip(0, 1)


def run_baseline(name: str, rgb01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    fns = {"telea": telea, "ns": navier_stokes, "gdal": gdal_fillnodata, "harmonic": harmonic}
    if name not in fns:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(fns)}")
    return fns[name](rgb01, mask)

"""Canny edges of a patch: the ONE edge function used for the store and at inference time.

Convention: edges 1 = edge pixel. Input gray images are float in [0, 1].

Implementation (OpenCV, chosen for speed; it reproduces scikit-image's ``canny`` which is
EdgeConnect's reference, ``canny(gray, sigma=2)`` with skimage's default thresholds):

1. Gray = ITU-R 709 luma ``0.2125 R + 0.7154 G + 0.0721 B`` (``skimage.color.rgb2gray``).
2. Smoothing: Gaussian, ``sigma`` pixels (default 2), kernel radius ``4 sigma`` (skimage's
   ``truncate=4``), zero padding outside the image or the ``valid`` region, renormalised by the
   smoothed validity ("bleed-over" correction, exactly as skimage's ``_preprocess``).
3. Gradient: 3x3 Sobel (unnormalised ``[1,2,1] x [-1,0,1]``, as ``scipy.ndimage.sobel``),
   magnitude = L2 norm. For a gray image in [0, 1] the magnitude is at most ``4 sqrt(2)``.
4. The smoothed image is scaled by ``GRADIENT_SCALE`` (4000), clipped to [0, 4000] and rounded
   to int16; the int16 Sobel derivatives (exact, <= 22627 in magnitude) feed
   ``cv2.Canny(dx, dy, low * 4000, high * 4000, L2gradient=True)``, which so applies skimage's
   thresholds on the same gradient (to within 4/4000 from the rounding): ``low_threshold=0.1``, ``high_threshold=0.2`` (gradient-magnitude
   units of a [0, 1] image), non-maximum suppression and 8-connected hysteresis.
5. The 1-pixel image border and any pixel whose 3x3 neighbourhood touches an invalid pixel
   are never edges (skimage's eroded mask).

Agreement with ``skimage.feature.canny`` on real patches is measured in tests/test_edges.py
(F1 ~0.9: the remaining differences come from OpenCV's sector-quantised non-maximum
suppression versus skimage's bilinear interpolation).
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

# OpenCV's parallel Canny splits the image into row stripes and its hysteresis differs at stripe
# boundaries with the thread count (1 px in ~655k on the real test store). One OpenCV thread makes
# the edges identical wherever they are computed (store, training, inference); parallelism comes
# from Dask (one shard per task) and from batching tiles instead.
cv2.setNumThreads(1)

#: float derivative -> int16 factor; 4 sqrt(2) * 4000 = 22627 < 32767, so no overflow.
GRADIENT_SCALE = 4000.0
#: skimage.color.rgb2gray weights (R, G, B).
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


class EdgeParams(BaseModel):
    """Canny parameters. Thresholds are on the Sobel gradient magnitude of a [0, 1] gray image."""

    model_config = ConfigDict(frozen=True)
    method: str = "opencv-canny-skimage-compatible"
    sigma: float = Field(2.0, gt=0, le=10, description="Gaussian smoothing sigma, pixels")
    low_threshold: float = Field(0.1, gt=0, description="hysteresis low threshold")
    high_threshold: float = Field(0.2, gt=0, description="hysteresis high threshold")

    @model_validator(mode="after")
    def _ordered(self) -> "EdgeParams":
        if self.high_threshold < self.low_threshold:
            raise ValueError(f"high_threshold {self.high_threshold} < low_threshold {self.low_threshold}")
        if self.high_threshold * GRADIENT_SCALE > 32767:
            raise ValueError(f"high_threshold {self.high_threshold} too large (max {32767 / GRADIENT_SCALE:.2f})")
        return self


def rgb_to_gray(rgb01: np.ndarray) -> np.ndarray:
    """(..., 3, H, W) float RGB in [0, 1] -> (..., H, W) float32 luma (skimage rgb2gray weights)."""
    rgb01 = np.asarray(rgb01)
    if rgb01.ndim < 3 or rgb01.shape[-3] != 3:
        raise ValueError(f"rgb_to_gray expects (..., 3, H, W), got shape {rgb01.shape}")
    r, g, b = (rgb01[..., i, :, :].astype(np.float32) for i in range(3))
    return GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b


def _ksize(sigma: float) -> int:
    return 2 * int(4.0 * sigma + 0.5) + 1  # skimage/scipy radius = int(truncate * sigma + 0.5)


_BORDER_ERODE = np.ones((3, 3), np.uint8)


@lru_cache(maxsize=8)
def _scaled_bleed_over(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """GRADIENT_SCALE / (smoothed all-ones image + 1e-7): the zero-padding correction when
    every pixel is valid, folded with the int16 scale."""
    k = _ksize(sigma)
    ones = np.ones(shape, np.float32)
    blurred = cv2.GaussianBlur(ones, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    out = np.float32(GRADIENT_SCALE) / (blurred + np.float32(1e-7))
    out.flags.writeable = False
    return out


def canny_edges(gray01: np.ndarray, params: EdgeParams = EdgeParams(),
                valid: np.ndarray | None = None) -> np.ndarray:
    """Canny edges of one (H, W) float gray image in [0, 1] -> (H, W) bool (True = edge).

    ``valid`` (H, W) bool, True = has data: missing pixels are ignored when smoothing and no
    edge is reported next to them (skimage's ``mask=`` semantics).
    """
    gray = np.asarray(gray01, dtype=np.float32)
    if gray.ndim != 2:
        raise ValueError(f"canny_edges expects a 2-D gray image, got shape {gray.shape}")
    if valid is not None and valid.shape != gray.shape:
        raise ValueError(f"valid shape {valid.shape} != image shape {gray.shape}")
    k = _ksize(params.sigma)
    blur = dict(ksize=(k, k), sigmaX=params.sigma, sigmaY=params.sigma, borderType=cv2.BORDER_CONSTANT)
    if valid is None:
        scaled = cv2.GaussianBlur(gray, **blur)
        np.multiply(scaled, _scaled_bleed_over(gray.shape, params.sigma), out=scaled)
    else:
        weight = valid.astype(np.float32)
        scaled = cv2.GaussianBlur(gray * weight, **blur) * np.float32(GRADIENT_SCALE) / (
            cv2.GaussianBlur(weight, **blur) + np.float32(1e-7))
    # smoothed image x GRADIENT_SCALE as int16 (<= 4000 + rounding), then exact integer Sobel
    np.clip(scaled, 0, GRADIENT_SCALE, out=scaled)  # gray is documented [0, 1]: no int16 overflow
    smoothed16 = np.rint(scaled, out=scaled).astype(np.int16)
    dx = cv2.Sobel(smoothed16, cv2.CV_16S, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    dy = cv2.Sobel(smoothed16, cv2.CV_16S, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    edges = cv2.Canny(dx, dy,
                      params.low_threshold * GRADIENT_SCALE, params.high_threshold * GRADIENT_SCALE,
                      L2gradient=True)
    edges[0, :] = edges[-1, :] = 0
    edges[:, 0] = edges[:, -1] = 0
    if valid is not None:
        edges &= cv2.erode(valid.astype(np.uint8), _BORDER_ERODE, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return edges > 0


def known_edges(image01: np.ndarray, hole: np.ndarray, params: EdgeParams = EdgeParams()) -> np.ndarray:
    """THE edges a model is given: Canny of a tile whose ``hole`` pixels (H, W; 1/True = missing)
    are unknown. ``image01`` (3, H, W) float in [0, 1]; hole pixels are zeroed, then excluded from
    smoothing and from edge candidates (``valid = not hole``). Returns (H, W) bool.

    Inference (:mod:`models.inference`) and training (:mod:`pipeline.dataset`) both call this on
    the masked tile, so G1 sees at training exactly what it sees at deployment: the known edges
    never depend on what is inside the hole."""
    hole = np.asarray(hole).astype(bool)
    image01 = np.asarray(image01, np.float32)
    if image01.ndim != 3 or image01.shape[0] != 3 or image01.shape[1:] != hole.shape:
        raise ValueError(f"known_edges expects image (3, H, W) and hole (H, W), got {image01.shape} and {hole.shape}")
    return canny_edges(rgb_to_gray(image01 * (~hole).astype(np.float32)), params, valid=~hole)


def edges_for_batch(images01: np.ndarray, params: EdgeParams = EdgeParams(),
                    valid: np.ndarray | None = None) -> np.ndarray:
    """(N, 3, H, W) float RGB in [0, 1] -> (N, 1, H, W) uint8 edges (1 = edge).

    ``valid`` optional (N, H, W) bool (True = has data), passed to :func:`canny_edges`.
    """
    images01 = np.asarray(images01)
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"edges_for_batch expects (N, 3, H, W), got shape {images01.shape}")
    return edges_for_stored(images01, None, params, valid)


def edges_for_stored(images: np.ndarray, to_unit=None, params: EdgeParams = EdgeParams(),
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Edges of stored patches (N, 3, H, W), converted one patch at a time by ``to_unit``
    (e.g. ``Radiometry.to_unit``; None = already in [0, 1]). Identical to
    ``edges_for_batch(to_unit(images))``: the conversion and the gray weights are elementwise,
    so for 8/16-bit patches they are tabulated once (lookup tables of the very same float32
    values) and applied per patch while it sits in cache."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) patches, got shape {images.shape}")
    out = np.zeros((images.shape[0], 1, *images.shape[2:]), np.uint8)
    luts = None
    if to_unit is not None and images.dtype in (np.uint8, np.uint16):
        unit = np.asarray(to_unit(np.arange(np.iinfo(images.dtype).max + 1, dtype=images.dtype)), np.float32)
        luts = [np.float32(w) * unit for w in GRAY_WEIGHTS]  # same ops as rgb_to_gray(to_unit(x))
    gray8, term8 = np.empty(images.shape[2:], np.float32), np.empty(images.shape[2:], np.float32)
    for i in range(images.shape[0]):
        if luts is not None:
            x = images[i]
            if x.dtype == np.uint8:  # cv2.LUT: same table values, much faster than fancy indexing
                gray = cv2.LUT(x[0], luts[0], dst=gray8)  # (r + g) + b, in float32 as rgb_to_gray
                np.add(gray, cv2.LUT(x[1], luts[1], dst=term8), out=gray)
                np.add(gray, cv2.LUT(x[2], luts[2], dst=term8), out=gray)
            else:
                gray = luts[0][x[0]] + luts[1][x[1]] + luts[2][x[2]]
        else:
            gray = rgb_to_gray(images[i] if to_unit is None else to_unit(images[i]))
        out[i, 0] = canny_edges(gray, params, None if valid is None else valid[i])
    return out

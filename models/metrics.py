"""Per-sample image metrics (numpy, float images in [0, 1], channels first; mask 1 = missing).

- PSNR (dB) with data range 1: ``10 log10(1 / MSE)``, MSE over the region's pixels and all
  channels; MSE is floored at 1e-10, so PSNR is capped at 100 dB (identical images).
- SSIM: Wang et al. 2004 with data_range 1, Gaussian window sigma 1.5 on an 11x11 support,
  K1 0.01, K2 0.03, population covariance, reflect padding - exactly scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1, full=True)`` map (tests/test_evaluate.py checks it), computed with OpenCV's
  Gaussian blur (~10x faster). The per-pixel map (mean over channels) is averaged over the region.
- L1: mean absolute difference over the region's pixels and all channels.
- "hole" = the pixels with mask 1 comparing the raw output with the truth; "composite" = the
  whole image, output pasted into the hole (``truth * (1 - M) + output * M``).
- Edge precision / recall / F1 of G1 inside the hole, edges binarised at 0.5, from summed
  counts (micro-average): :class:`EdgeCounts`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # = 2 * int(3.5 * sigma + 0.5) + 1, skimage's support for sigma 1.5


def _region(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape[-2:], bool)
    m = np.asarray(mask).astype(bool)
    return m.reshape(shape[-2:])


def psnr(pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None) -> float:
    reg = _region(region, pred.shape)
    if not reg.any():
        return float("nan")
    mse = float(np.mean((pred.astype(np.float64) - truth.astype(np.float64))[..., reg] ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 10 ** (-PSNR_CAP_DB / 10))))


def l1(pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None) -> float:
    reg = _region(region, pred.shape)
    if not reg.any():
        return float("nan")
    return float(np.mean(np.abs(pred.astype(np.float64) - truth.astype(np.float64))[..., reg]))


def ssim_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(H, W) SSIM map (mean over channels) of two (C, H, W) images in [0, 1]."""
    x = np.moveaxis(np.asarray(truth, np.float64), 0, -1)
    y = np.moveaxis(np.asarray(pred, np.float64), 0, -1)
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {x.shape[:2]}")

    def blur(a: np.ndarray) -> np.ndarray:
        out = cv2.GaussianBlur(a, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
        return out.reshape(a.shape)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=-1)


def ssim(pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None) -> float:
    reg = _region(region, pred.shape)
    if not reg.any():
        return float("nan")
    return float(ssim_map(pred, truth)[reg].mean())


def image_metrics(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """hole_* (raw output vs truth inside the hole) and comp_* (composite, whole image)."""
    hole = _region(mask, output.shape)
    comp = truth * (1 - hole) + output * hole
    smap = ssim_map(output, truth)
    cmap = ssim_map(comp, truth)
    return {"hole_psnr": psnr(output, truth, hole), "hole_ssim": float(smap[hole].mean()) if hole.any() else float("nan"),
            "hole_l1": l1(output, truth, hole), "comp_psnr": psnr(comp, truth), "comp_ssim": float(cmap.mean()),
            "comp_l1": l1(comp, truth)}


@dataclass
class EdgeCounts:
    """True/false positives and false negatives of binarised edges inside the hole."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @classmethod
    def of(cls, gen: np.ndarray, raw: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> "EdgeCounts":
        hole = np.asarray(mask).astype(bool).reshape(gen.shape[-2:])
        g = (np.asarray(gen).reshape(hole.shape) >= threshold) & hole
        r = (np.asarray(raw).reshape(hole.shape) >= 0.5) & hole
        return cls(int((g & r).sum()), int((g & ~r).sum()), int((~g & r).sum()))

    def __add__(self, other: "EdgeCounts") -> "EdgeCounts":
        return EdgeCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def scores(self) -> dict[str, float]:
        """precision = tp / (tp + fp), recall = tp / (tp + fn), F1 their harmonic mean (NaN if undefined)."""
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")
        f = 2 * p * r / (p + r) if (p + r) and not (np.isnan(p) or np.isnan(r)) else (0.0 if p == 0 or r == 0 else float("nan"))
        return {"edge_precision": p, "edge_recall": r, "edge_f1": f}

"""Per-sample image metrics (numpy, float images in [0, 1], channels first; mask 1 = missing).

- PSNR (dB) with data range 1: ``10 log10(1 / MSE)``, MSE over the region's pixels and all
  channels; MSE is floored at 1e-10, so PSNR is capped at 100 dB (identical images).
- SSIM: Wang et al. 2004 with data_range 1, Gaussian window sigma 1.5 on an 11x11 support,
  K1 0.01, K2 0.03, population covariance, symmetric (half-sample) padding - exactly
  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, full=True)`` map (tests/test_evaluate.py checks it).
  :func:`ssim_map_torch` is THE implementation (differentiable: G1's structural loss uses it
  too); :func:`ssim_map` is its numpy face. The per-pixel map (mean over channels) is averaged
  over the region.
- L1: mean absolute difference over the region's pixels and all channels.
- "hole" = the pixels with mask 1 comparing the raw output with the truth; "composite" = the
  whole image, output pasted into the hole (``truth * (1 - M) + output * M``).
- Edge precision / recall / F1 of G1 inside the hole, edges binarised at 0.5, matched with the
  same 2 px localisation tolerance as the edge MAPE (:func:`models.losses.edge_mape`; boundary
  benchmarks such as BSDS score edges so), from summed counts (micro-average): :class:`EdgeCounts`.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def _gaussian_1d(window: int, sigma: float, dtype, device):
    import torch

    x = torch.arange(window, dtype=dtype, device=device) - (window - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x, g):
    """Separable Gaussian of (N, C, H, W) with symmetric (half-sample) padding."""
    import torch
    import torch.nn.functional as F

    r = (len(g) - 1) // 2
    x = torch.cat([x[..., :, :r].flip(-1), x, x[..., :, -r:].flip(-1)], dim=-1)
    x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_map_torch(pred, truth, *, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, data_range: float = 1.0):
    """(N, 1, H, W) SSIM map (mean over channels) of two (N, C, H, W) tensors; differentiable."""
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} px, got {tuple(pred.shape[-2:])}")
    g = _gaussian_1d(window, sigma, pred.dtype, pred.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(truth, g), _blur(pred, g)
    vx, vy = _blur(truth * truth, g) - mx * mx, _blur(pred * pred, g) - my * my
    cov = _blur(truth * pred, g) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=1, keepdim=True)


def ssim_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(H, W) SSIM map (mean over channels) of two (C, H, W) images in [0, 1] (float64)."""
    import torch

    p = torch.from_numpy(np.asarray(pred, np.float64))[None]
    t = torch.from_numpy(np.asarray(truth, np.float64))[None]
    return ssim_map_torch(p, t)[0, 0].numpy()


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


EDGE_TOLERANCE_PX = 2  # = models.losses.EDGE_TOLERANCE_PX


@dataclass
class EdgeCounts:
    """Matched / unmatched binarised edge pixels inside the hole (``tolerance_px`` matching):
    ``tp`` generated edges with a true edge that close, ``fp`` generated edges without,
    ``hit`` true edges with a generated edge that close, ``fn`` true edges without."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    hit: int = 0

    @classmethod
    def of(cls, gen: np.ndarray, raw: np.ndarray, mask: np.ndarray, threshold: float = 0.5,
           tolerance_px: int = EDGE_TOLERANCE_PX) -> "EdgeCounts":
        import cv2

        hole = np.asarray(mask).astype(bool).reshape(gen.shape[-2:])
        g = (np.asarray(gen).reshape(hole.shape) >= threshold) & hole
        r = (np.asarray(raw).reshape(hole.shape) >= 0.5) & hole
        k = np.ones((2 * tolerance_px + 1,) * 2, np.uint8)
        near_r = cv2.dilate(r.astype(np.uint8), k) > 0
        near_g = cv2.dilate(g.astype(np.uint8), k) > 0
        return cls(tp=int((g & near_r).sum()), fp=int((g & ~near_r).sum()), fn=int((r & ~near_g).sum()),
                   hit=int((r & near_g).sum()))

    def __add__(self, other: "EdgeCounts") -> "EdgeCounts":
        return EdgeCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.hit + other.hit)

    def scores(self) -> dict[str, float]:
        """precision = tp / (tp + fp), recall = hit / (hit + fn), F1 their harmonic mean (NaN if undefined)."""
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")
        r = self.hit / (self.hit + self.fn) if self.hit + self.fn else float("nan")
        f = 2 * p * r / (p + r) if (p + r) and not (np.isnan(p) or np.isnan(r)) else (0.0 if p == 0 or r == 0 else float("nan"))
        return {"edge_precision": p, "edge_recall": r, "edge_f1": f}

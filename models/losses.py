"""Losses: the seed's two-stage edge loss for G1, EdgeConnect's losses for G2.

All inputs are float tensors NCHW; mask 1 = missing; edges in [0, 1]. Discriminators return
raw logits. GAN objectives (``kind``):

- ``"bce"``  EdgeConnect's non-saturating GAN: BCE-with-logits against 1 (real) / 0 (fake).
- ``"l1"``   seed stage 1: mean ``|D(x) - target|`` on the raw outputs.
- ``"l2"``   seed stage 2 / LSGAN: mean ``(D(x) - target)^2`` on the raw outputs.
"""
from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

from models.vgg import VGG19Features


def gan_loss(logits: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    """Objective pushing ``logits`` toward the real (1) or fake (0) target."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "l1":
        return (logits - target).abs().mean()
    if kind == "l2":
        return ((logits - target) ** 2).mean()
    raise ValueError(f"unknown GAN objective {kind!r} (bce, l1, l2)")


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, kind: str) -> torch.Tensor:
    """``(real term + fake term) / 2``. ``d_fake`` must be D's output on generated samples
    computed WITH gradient to D (detach the generator output, never D's output: the seed
    repo detached D's output on fakes, so its discriminators never learned from them)."""
    return (gan_loss(d_real, True, kind) + gan_loss(d_fake, False, kind)) / 2


def feature_matching_loss(real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor], norm: str = "l1") -> torch.Tensor:
    """Sum over D's layers of mean |real - fake|^p (p = 1 for "l1", 2 for "l2"); real detached."""
    total = fake_feats[0].new_zeros(())
    for r, f in zip(real_feats, fake_feats):
        diff = f - r.detach()
        total = total + (diff.abs().mean() if norm == "l1" else (diff ** 2).mean())
    return total


def structure_loss(edge_gen: torch.Tensor, edge_raw: torch.Tensor, mask: torch.Tensor, window: int = 11) -> torch.Tensor:
    """``1 - SSIM(edge_raw * M, edge_gen * M)`` (kornia, Gaussian window ``window`` px,
    sigma 1.5, data range 1). In [0, 2]; never NaN (unlike ``-log SSIM``)."""
    ssim = kornia.metrics.ssim(edge_raw * mask, edge_gen * mask, window, max_val=1.0)
    return 1.0 - ssim.mean()


def edge_mape(edge_gen: torch.Tensor, edge_raw: torch.Tensor, mask: torch.Tensor, min_edge_pixels: float = 1.0) -> torch.Tensor:
    """NaN-free edge MAPE over the hole: ``sum |gen - raw| * M / max(sum raw * M, min_edge_pixels)``.

    Units: a ratio (0 = perfect). The denominator is at least ``min_edge_pixels`` so a hole
    without true edges gives the count of hallucinated edge mass instead of inf/NaN."""
    num = ((edge_gen - edge_raw).abs() * mask).sum()
    den = (edge_raw * mask).sum().clamp_min(min_edge_pixels)
    return num / den


def hole_normalised_l1(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """EdgeConnect's G2 L1: mean |out - target| over the image divided by the hole fraction."""
    return (output - target).abs().mean() / mask.mean().clamp_min(eps)


def hole_mean_l1(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |output - target| over the hole pixels only (all channels); 0 when there is no hole.
    A monitoring metric (``hole_l1``), not a training loss."""
    hole = mask.expand_as(output)
    return ((output - target).abs() * hole).sum() / hole.sum().clamp_min(1.0)


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_LAYERS = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")


def perceptual_and_style(vgg: VGG19Features, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EdgeConnect's perceptual (L1 on relu*_1) and style (L1 on Gram matrices) losses."""
    fo, ft = vgg(output.float()), vgg(target.float())
    perceptual = sum(F.l1_loss(fo[k], ft[k].detach()) for k in PERCEPTUAL_LAYERS)
    style = sum(F.l1_loss(gram_matrix(fo[k]), gram_matrix(ft[k]).detach()) for k in STYLE_LAYERS)
    return perceptual, style

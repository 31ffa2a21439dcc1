"""Losses: the seed's two-stage edge loss for G1, EdgeConnect's losses for G2.

All inputs are float tensors NCHW; mask 1 = missing; edges in [0, 1]. Discriminators return
raw logits. GAN objectives (``kind``), as EdgeConnect computes them (its discriminators end in a
sigmoid for every objective but hinge):

- ``"bce"``  EdgeConnect's non-saturating GAN: BCE-with-logits against 1 (real) / 0 (fake).
- ``"l1"``   seed stage 1: mean ``|sigmoid(D(x)) - target|``.
- ``"l2"``   seed stage 2, EdgeConnect's ``lsgan``: mean ``(sigmoid(D(x)) - target)^2``.

Edge MAPE (what the stage switch reads) is tolerant to localisation, see :func:`edge_mape`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.metrics import ssim_map_torch
from models.vgg import VGG19Features


def gan_loss(logits: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    """Objective pushing ``logits`` toward the real (1) or fake (0) target."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "l1":
        return (torch.sigmoid(logits) - target).abs().mean()
    if kind == "l2":
        return ((torch.sigmoid(logits) - target) ** 2).mean()
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
    """``1 - SSIM(edge_raw * M, edge_gen * M)`` (the project's one SSIM,
    :func:`models.metrics.ssim_map_torch`: Gaussian window ``window`` px, sigma 1.5, data range 1).
    In [0, 2]; never NaN (unlike ``-log SSIM``)."""
    return 1.0 - ssim_map_torch(edge_gen * mask, edge_raw * mask, window=window).mean()


#: Localisation tolerance of :func:`edge_mape`, px (Canny's smoothing sigma: edges of a [0, 1]
#: image are only defined to about that precision).
EDGE_TOLERANCE_PX = 2


def _dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius) if radius > 0 else x


def edge_mape(edge_gen: torch.Tensor, edge_raw: torch.Tensor, mask: torch.Tensor, *,
              tolerance_px: int = EDGE_TOLERANCE_PX, threshold: float = 0.5) -> torch.Tensor:
    """The edge MAPE the G1 stage switch reads: the relative error of the edge map inside the
    hole, with a ``tolerance_px`` localisation tolerance (as boundary benchmarks such as BSDS score
    edges). Generated edges are binarised at ``threshold``; a true edge pixel is *missed* if no
    generated edge lies within ``tolerance_px`` (Chebyshev distance), a generated edge pixel is
    *spurious* if no true edge lies that close; over the hole pixels of the whole batch::

        MAPE = (missed + spurious) / max(true edge pixels, 1)

    0 = every edge found where it is, 1 = an empty map (every true edge missed). Why not the
    pixel-exact ``sum |gen - raw| / sum raw`` (:func:`edge_mape_exact`): a perfect edge map shifted
    by one pixel scores 1.78 there and trained G1s sit at 1.1-1.4, so its 0.1 switch never fires;
    here the shifted map scores 0 and a map with 90 % of its edges right scores about 0.1."""
    errors, true = edge_mape_counts(edge_gen, edge_raw, mask, tolerance_px=tolerance_px, threshold=threshold)
    return errors / true.clamp_min(1.0)


def edge_mape_counts(edge_gen: torch.Tensor, edge_raw: torch.Tensor, mask: torch.Tensor, *,
                     tolerance_px: int = EDGE_TOLERANCE_PX, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(missed + spurious, true edge pixels) inside the hole: :func:`edge_mape`'s numerator and
    denominator, so MAPEs of several batches can be pooled. Inputs (N, 1, H, W)."""
    hole = (mask > 0.5).float()
    gen = (edge_gen >= threshold).float() * hole
    raw = (edge_raw >= 0.5).float() * hole
    missed = (raw * (1 - _dilate(gen, tolerance_px))).sum()
    spurious = (gen * (1 - _dilate(raw, tolerance_px))).sum()
    return missed + spurious, raw.sum()


def edge_mape_exact(edge_gen: torch.Tensor, edge_raw: torch.Tensor, mask: torch.Tensor, min_edge_pixels: float = 1.0) -> torch.Tensor:
    """Pixel-exact edge MAPE over the hole: ``sum |gen - raw| * M / max(sum raw * M, min_edge_pixels)``
    (logged beside :func:`edge_mape`; a ratio, 0 = perfect)."""
    num = ((edge_gen - edge_raw).abs() * mask).sum()
    den = (edge_raw * mask).sum().clamp_min(min_edge_pixels)
    return num / den


def hole_normalised_l1(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-3,
                       scale: torch.Tensor | None = None) -> torch.Tensor:
    """EdgeConnect's G2 L1: mean |out - target| over the image divided by the hole fraction.
    ``scale`` (N, C, 1, 1), optional: errors are divided by it first (e.g. each tile's known-pixel
    std, so a low-contrast tile weighs as much as a bright one - as the per-patch PSNR does)."""
    diff = (output - target).abs()
    if scale is not None:
        diff = diff / scale
    return diff.mean() / mask.mean().clamp_min(eps)


def hole_log_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean over samples of ``log(MSE over the sample's hole pixels + eps)``: minimising it
    maximises the mean hole PSNR exactly (PSNR = -10 log10 MSE), each sample weighted by the
    inverse of its own error. ``eps`` (units of a [0, 1] image, squared) caps the weight at
    50 dB. Samples without a hole contribute log(eps), a constant."""
    hole = mask.expand_as(output)
    mse = (((output - target) ** 2) * hole).sum((1, 2, 3)) / hole.sum((1, 2, 3)).clamp_min(1.0)
    return torch.log(mse + eps).mean()


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


def perceptual_and_style(vgg: VGG19Features, output: torch.Tensor, target: torch.Tensor,
                         mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EdgeConnect's perceptual loss (L1 on relu*_1 of the whole images) and style loss (L1 on
    Gram matrices of the MASKED images, ``output * M`` vs ``target * M``, as EdgeConnect does).
    VGG inputs follow EdgeConnect: RGB in [0, 1] with ImageNet mean/std (inside :class:`VGG19Features`)."""
    fo, ft = vgg(output.float()), vgg(target.float())
    perceptual = sum(F.l1_loss(fo[k], ft[k].detach()) for k in PERCEPTUAL_LAYERS)
    mo, mt = vgg(output.float() * mask), vgg(target.float() * mask)
    style = sum(F.l1_loss(gram_matrix(mo[k]), gram_matrix(mt[k]).detach()) for k in STYLE_LAYERS)
    return perceptual, style

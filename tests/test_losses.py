"""Losses against hand-computed values, NaN-freedom, and discriminator gradients from fakes."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from models.config import ModelConfig
from models.losses import (discriminator_loss, edge_mape, edge_mape_exact, feature_matching_loss, gan_loss,
                           hole_log_mse, hole_normalised_l1, perceptual_and_style, structure_loss)
from models.networks import Discriminator
from models.trainer import Trainer
from models.vgg import VGG19Features

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = pytest.mark.usefixtures("single_thread")


def test_gan_objectives_hand_computed():
    """L1 / L2 act on sigmoid(D) (EdgeConnect's lsgan form), BCE on the logits."""
    x = torch.tensor([0.5, -1.0])
    s = [1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(1.0))]
    assert gan_loss(x, True, "l1").item() == pytest.approx(((1 - s[0]) + (1 - s[1])) / 2, rel=1e-6)
    assert gan_loss(x, False, "l2").item() == pytest.approx((s[0] ** 2 + s[1] ** 2) / 2, rel=1e-6)
    # bounded: a discriminator cannot drive the L1/L2 objectives below 0 or above 1 by scaling its logits
    assert 0 <= gan_loss(torch.tensor([1e4, -1e4]), True, "l2").item() <= 1
    bce_real = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2
    assert gan_loss(x, True, "bce").item() == pytest.approx(bce_real, rel=1e-6)
    with pytest.raises(ValueError, match="unknown GAN objective"):
        gan_loss(x, True, "wgan")


def test_feature_matching_norms():
    real, fake = [torch.zeros(4), torch.ones(2)], [torch.full((4,), 2.0), torch.ones(2) * 0.5]
    assert feature_matching_loss(real, fake, "l1").item() == pytest.approx(2.0 + 0.5)
    assert feature_matching_loss(real, fake, "l2").item() == pytest.approx(4.0 + 0.25)


def test_edge_mape_exact_hand_computed_and_nan_free():
    raw = torch.zeros(1, 1, 4, 4)
    raw[0, 0, 1, :] = 1          # 4 edge pixels, 2 of them in the hole
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :, :2] = 1        # hole = left two columns (8 px)
    gen = raw.clone()
    gen[0, 0, 1, 0] = 0.5        # off by 0.5 in the hole
    gen[0, 0, 3, 1] = 1.0        # one hallucinated edge in the hole
    gen[0, 0, 3, 3] = 1.0        # outside the hole: ignored
    assert edge_mape_exact(gen, raw, mask).item() == pytest.approx((0.5 + 1.0) / 2)
    assert edge_mape_exact(raw, raw, mask).item() == 0
    empty = edge_mape_exact(gen, torch.zeros_like(raw), mask)   # no true edges in the hole
    # hole values of gen: 0.5 + 1.0 (true edge kept at (1, 1)) + 1.0 (hallucinated); denominator floored at 1
    assert torch.isfinite(empty) and empty.item() == pytest.approx(2.5)


def _line_map(offset: int = 0) -> torch.Tensor:
    edges = torch.zeros(1, 1, 64, 64)
    for c in range(64):  # a diagonal-ish road and a straight field border
        edges[0, 0, min(63, 10 + c // 2 + offset), c] = 1
        edges[0, 0, 40 + offset, c] = 1
    return edges


def test_edge_mape_the_switch_reads_scores_good_maps_below_the_threshold():
    raw, mask = _line_map(), torch.ones(1, 1, 64, 64)
    shifted = _line_map(offset=1)
    assert edge_mape(raw, raw, mask).item() == 0
    assert edge_mape(shifted, raw, mask).item() == 0           # 1 px off: within the 2 px tolerance
    assert edge_mape_exact(shifted, raw, mask).item() > 1.5   # the pixel-exact MAPE calls it a failure
    assert edge_mape(torch.zeros_like(raw), raw, mask).item() == pytest.approx(1.0)   # empty map: all missed
    partial = raw.clone()
    partial[..., :, 56:] = 0                                     # 1 in 8 edge pixels lost (2 px found by tolerance)
    assert 0.05 < edge_mape(partial, raw, mask).item() < 0.1
    assert edge_mape(torch.ones_like(raw), raw, mask).item() > 5   # edges everywhere: heavily penalised
    far = _line_map(offset=5)
    assert edge_mape(far, raw, mask).item() > 1.5                # 5 px off is wrong


def test_structure_loss_is_one_minus_ssim_and_never_nan():
    edges = (torch.rand(2, 1, 32, 32) > 0.8).float()
    mask = torch.ones_like(edges)
    assert structure_loss(edges, edges, mask).item() == pytest.approx(0.0, abs=1e-5)
    zero = torch.zeros_like(edges, requires_grad=True)
    loss = structure_loss(zero, torch.zeros_like(edges), torch.zeros_like(edges))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zero.grad).all()
    assert 0 < structure_loss(torch.rand_like(edges), edges, mask).item() < 2


def test_hole_normalised_l1():
    out, tgt = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 0, 0] = 1
    assert hole_normalised_l1(out, tgt, mask).item() == pytest.approx(1.0 / 0.25)
    assert torch.isfinite(hole_normalised_l1(out, tgt, torch.zeros_like(mask)))


def test_discriminator_gets_gradient_from_the_fake_term():
    torch.manual_seed(0)
    d = Discriminator(1, ModelConfig.tiny())
    fake = torch.rand(2, 1, 64, 64, requires_grad=True)
    logits, _ = d(fake.detach())
    gan_loss(logits, False, "l2").backward()
    grads = [p.grad for p in d.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_trainer_d1_update_uses_real_and_generated_samples():
    """The gradient D1 steps on equals that of (real term + fake term), not the real term alone."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(batch_size=2)
    trainer = Trainer(cfg, torch.device("cpu"))
    g1, d1 = copy.deepcopy(trainer.nets["g1"]), copy.deepcopy(trainer.nets["d1"])
    edges = (torch.rand(2, 1, 64, 64) > 0.85).float()
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    trainer.edge_step(edges, edges * (1 - mask), mask)
    stepped = [p.grad.clone() for p in trainer.nets["d1"].parameters()]

    def grads(include_fake: bool):
        d = copy.deepcopy(d1)
        with torch.no_grad():
            gen = g1(edges * (1 - mask), mask)
        logits, _ = d(torch.cat([edges, gen]))
        real, fake = logits.chunk(2)
        loss = discriminator_loss(real, fake, "l1") if include_fake else gan_loss(real, True, "l1") / 2
        loss.backward()
        return [p.grad for p in d.parameters()]

    full, real_only = grads(True), grads(False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(stepped, full))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(stepped, real_only))


def test_vgg19_layout_loads_torchvision_state_dict(tmp_path):
    vgg = VGG19Features()
    shapes = {k: tuple(v.shape) for k, v in vgg.state_dict().items()}
    # torchvision vgg19().features: conv indices and shapes
    assert shapes["features.0.weight"] == (64, 3, 3, 3) and shapes["features.34.weight"] == (512, 512, 3, 3)
    assert len([k for k in shapes if k.endswith(".weight")]) == 16
    state = {k: torch.randn(v) * 0.01 for k, v in shapes.items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # full torchvision dicts carry the classifier too
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    cfg = ModelConfig.tiny(vgg19_weights=path)
    trainer = Trainer(cfg, torch.device("cpu"))
    assert trainer.vgg is not None and not trainer.warnings
    assert torch.equal(trainer.vgg.features[34].weight, state["features.34.weight"])
    img = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    scalars = trainer.inpaint_step(img, (torch.rand(1, 1, 32, 32) > 0.8).float(), mask)
    assert scalars["g2_perceptual"] > 0 and scalars["g2_style"] > 0


def test_style_loss_compares_masked_images_and_perceptual_whole_images():
    """EdgeConnect: style on output * M vs target * M; perceptual on the whole images."""
    torch.manual_seed(0)
    vgg = VGG19Features()
    for p in vgg.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    target = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    outside_only = target * mask + torch.rand(1, 3, 32, 32) * (1 - mask)   # differs only outside the hole
    perc, style = perceptual_and_style(vgg, outside_only, target, mask)
    assert style.item() == pytest.approx(0.0, abs=1e-9) and perc.item() > 0
    inside = target * (1 - mask) + torch.rand(1, 3, 32, 32) * mask
    assert perceptual_and_style(vgg, inside, target, mask)[1].item() > 0


def test_cosine_learning_rate_decays_to_the_floor_and_resumes_from_the_step():
    cfg = ModelConfig.tiny(max_steps=100, lr_schedule="cosine", lr_min_factor=0.1, lr_g=1e-3, lr_d=1e-4)
    trainer = Trainer(cfg, torch.device("cpu"))
    lrs = {}
    for step in (0, 50, 100):
        trainer.state.step = step
        trainer.set_learning_rates()
        lrs[step] = (trainer.opts["g1"].param_groups[0]["lr"], trainer.opts["d2"].param_groups[0]["lr"])
    assert lrs[0] == pytest.approx((1e-3, 1e-4))
    assert lrs[50] == pytest.approx((0.55e-3, 0.55e-4))
    assert lrs[100] == pytest.approx((1e-4, 1e-5))


def test_without_vgg_weights_perceptual_and_style_are_off_with_a_warning(monkeypatch):
    monkeypatch.delenv("EDGEFILL_VGG19_WEIGHTS", raising=False)
    trainer = Trainer(ModelConfig.tiny(), torch.device("cpu"))
    assert trainer.vgg is None and "perceptual and style losses are OFF" in trainer.warnings[0]


def test_log_mse_is_minus_the_mean_hole_psnr_up_to_constants():
    target = torch.zeros(2, 3, 8, 8)
    out = target.clone()
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4, :4] = 1
    out[0, :, :4, :4] = 0.1      # sample 0: hole MSE 0.01 (20 dB)
    out[1, :, :4, :4] = 0.01     # sample 1: hole MSE 1e-4 (40 dB)
    out[:, :, 6:, 6:] = 1.0      # errors outside the hole do not count
    value = hole_log_mse(out, target, mask, eps=0.0).item()
    assert value == pytest.approx((math.log(1e-2) + math.log(1e-4)) / 2, rel=1e-5)
    psnr_mean = (20 + 40) / 2
    assert -10 * value / math.log(10) == pytest.approx(psnr_mean, rel=1e-5)

"""EdgeConnect networks: full-size parameter counts, shapes, input conventions, bad input."""
from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.networks import Discriminator, EdgeGenerator, InpaintGenerator, build_networks, count_parameters


def test_full_config_parameter_counts_match_edgeconnect():
    nets = build_networks(ModelConfig.full())
    counts = {k: count_parameters(v) for k, v in nets.items()}
    # G1 has 2 input channels (mask + masked edges, no grayscale), spectral norm, bias-free res convs.
    assert counts["g1"] == 10_757_953 and round(counts["g1"] / 1e6, 2) == 10.76
    assert counts["g2"] == 10_774_595 and round(counts["g2"] / 1e6, 2) == 10.77
    assert round(counts["d1"] / 1e6, 2) == 2.76 and round(counts["d2"] / 1e6, 2) == 2.76
    assert counts["d1"] == 2_761_728 and counts["d2"] == 2_763_776


def test_g1_takes_only_mask_and_masked_edges_and_uses_spectral_norm():
    g1 = EdgeGenerator(ModelConfig.full())
    first = g1.body[1]
    assert first.parametrizations.weight.original.shape[1] == 2
    g2 = InpaintGenerator(ModelConfig.full())
    assert not any(hasattr(m, "parametrizations") for m in g2.modules())


def _changed(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual-fill"])
def test_tiny_shapes_and_every_input_matters(residual):
    """Each generator's output depends on each of its inputs (a network that dropped one, e.g. G2
    ignoring the edges G1 completed, fails), sample by sample (no mixing across the batch)."""
    cfg = ModelConfig.tiny()
    if residual:
        cfg = cfg.model_copy(update={"g2_residual_fill": True, "g2_normalise": True})
    torch.manual_seed(0)
    g1, g2, d = EdgeGenerator(cfg).eval(), InpaintGenerator(cfg).eval(), Discriminator(3, cfg)
    if residual:  # the residual head starts at zero (G2 = the harmonic fill): give it weights to test
        torch.nn.init.normal_(g2.body[-1].weight, std=0.05)
    mask = (torch.rand(2, 1, 64, 64) > 0.6).float()
    edges = (torch.rand(2, 1, 64, 64) > 0.9).float()
    rgb = torch.rand(2, 3, 64, 64)
    other_mask = torch.roll(mask, 7, dims=-1)
    with torch.no_grad():
        e = g1(edges * (1 - mask), mask)
        assert e.shape == (2, 1, 64, 64)
        assert _changed(e, g1(torch.flip(edges, [-1]) * (1 - mask), mask)) > 1e-3           # the known edges
        assert _changed(e, g1(edges * (1 - other_mask), other_mask)) > 1e-3                 # the mask
        out = g2(rgb * (1 - mask), e, mask)
        assert out.shape == (2, 3, 64, 64)
        hole = mask.bool().expand_as(out)
        assert _changed(out[hole], g2(torch.flip(rgb, [-1]) * (1 - mask), e, mask)[hole]) > 1e-3  # known pixels
        assert _changed(out[hole], g2(rgb * (1 - mask), 1 - e, mask)[hole]) > 1e-3           # G1's edges
        assert _changed(out, g2(rgb * (1 - other_mask), e, other_mask)) > 1e-3              # the mask
        alone = g2(rgb[1:] * (1 - mask[1:]), e[1:], mask[1:])                               # batch-independent
        torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=1e-5)
    logits, feats = d(out)
    assert logits.shape == (2, 1, 6, 6) and len(feats) == 5 and feats[-1] is logits
    assert _changed(logits, d(torch.flip(out, [-1]))[0]) > 1e-4


def test_generators_ignore_what_the_hole_holds():
    """Whatever the caller leaves inside the hole (zeros or the truth) must not leak in."""
    cfg = ModelConfig.tiny()
    torch.manual_seed(1)
    g1, g2 = EdgeGenerator(cfg).eval(), InpaintGenerator(cfg).eval()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    rgb, edges = torch.rand(1, 3, 32, 32), (torch.rand(1, 1, 32, 32) > 0.8).float()
    with torch.no_grad():
        assert torch.allclose(g1(edges, mask), g1(edges * (1 - mask), mask))
        assert torch.allclose(g2(rgb, edges, mask), g2(rgb * (1 - mask), edges, mask))


def test_bad_input_shapes_raise_clear_errors():
    g1 = EdgeGenerator(ModelConfig.tiny())
    with pytest.raises(ValueError, match="multiples of 4"):
        g1(torch.zeros(1, 1, 30, 30), torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match="equal N, H, W"):
        g1(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 16, 16))


def test_smooth_fill_keeps_known_pixels_and_interpolates_the_hole():
    from models.networks import smooth_fill
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    image = torch.stack([x, y, 0.5 * x + 0.25]).unsqueeze(0)  # smooth ramps
    known = torch.ones(1, 1, 64, 64)
    known[..., :, 20:24] = 0  # a 4 px SLC-off-like stripe
    known[..., 40:56, 40:56] = 0  # a 16 px block
    filled = smooth_fill(image * known, known)
    assert torch.equal(filled * known, image * known)
    hole = (1 - known).bool().expand_as(image)
    err = (filled - image).abs()[hole]
    white_err = (1 - image).abs()[hole]  # EdgeConnect's white prefill
    assert err.max() < 0.12 and err.mean() < 0.03 and err.mean() < 0.1 * white_err.mean()
    const = smooth_fill(torch.full((1, 3, 32, 32), 0.3) * known[..., :32, :32], known[..., :32, :32])
    assert torch.allclose(const, torch.full_like(const, 0.3), atol=1e-5)


def test_residual_fill_g2_starts_at_the_smooth_fill_and_keeps_the_full_hash():
    from models.networks import smooth_fill
    cfg = ModelConfig.demo()
    assert cfg.g2_residual_fill and not ModelConfig.full().g2_residual_fill
    assert ModelConfig.tiny().architecture_hash() == ModelConfig.tiny(max_steps=1).architecture_hash()
    assert cfg.architecture_hash() != ModelConfig.tiny().architecture_hash()
    assert "g2_residual_fill" not in ModelConfig.full().architecture()
    torch.manual_seed(2)
    g2 = InpaintGenerator(cfg).eval()
    assert g2.body[1].weight.shape[1] == 5  # filled RGB, edges, mask
    rgb, edges = torch.rand(1, 3, 32, 32), (torch.rand(1, 1, 32, 32) > 0.8).float()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, 10:13] = 1
    with torch.no_grad():
        out = g2(rgb * (1 - mask), edges, mask)
    expected = smooth_fill(rgb * (1 - mask), 1 - mask).clamp(1e-3, 1 - 1e-3)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_outputs_are_float32_with_fine_levels_under_bf16_autocast(residual):
    """A bf16 output head posterises (~150 levels over 0.05-0.35); the heads run in float32."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny().model_copy(update={"g2_residual_fill": residual, "g2_normalise": residual})
    g1, g2 = EdgeGenerator(cfg).eval(), InpaintGenerator(cfg).eval()
    if residual:  # a trained residual head is non-zero
        torch.nn.init.normal_(g2.body[-1].weight, 0, 0.02)
    y, x = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    ramp = (0.05 + 0.3 * (0.6 * x + 0.4 * y)).expand(1, 3, 128, 128).contiguous()
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., 32:96, 32:96] = 1
    edges = torch.zeros(1, 1, 128, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rgb = g2(ramp * (1 - mask), edges, mask)
        prob = g1(edges, mask)
    assert rgb.dtype == torch.float32 and prob.dtype == torch.float32
    assert torch.unique(rgb[:, :, 32:96, 32:96]).numel() >= 4096
    assert torch.unique(prob).numel() >= 4096

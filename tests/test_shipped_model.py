"""The model shipped in models/weights: it loads, its config matches its weights, it fills real
test patches better than its own harmonic prefill (what an untrained residual G2 returns), and
`edgefill inpaint IN OUT` uses it with no --model.

Why the prefill and not the mean colour: the prefill alone scores 0.47-0.78 of the mean-colour
hole L1 on these patches, so "beats the mean colour" holds for a G2 that learned nothing. The
shipped model adds little over its prefill (its card: +0.06 dB test hole PSNR on average), so
the claim tested is that small gain, judged against its spread over patches: on the 16 test
pairs (first of every mask kind and hole-ratio bin) the per-pair hole-L1 ratio model / prefill
is 0.977-1.017, mean 0.9914, standard error 0.0027, i.e. the mean gain is 3.2 standard errors
(all 128 test pairs: 0.9919, 6.7 standard errors). Fixed weights and fixed pairs: machine-to-
machine differences are float rounding (< 1e-5 of the ratio); an untrained G2 scores exactly 1."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from models.checkpoint import load_checkpoint, run_model_config
from models.config import ModelConfig
from models.evaluate import ModelFill, score_pairs, select_pairs
from models.registry import SHIPPED_DIR, current_model, load_model, resolve_model, shipped_index
from pipeline.dataset import EvalPairs

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def fresh_user(tmp_path, monkeypatch):
    """A user with no registry of their own (as on a fresh clone)."""
    monkeypatch.delenv("EDGEFILL_REGISTRY", raising=False)
    monkeypatch.setenv("EDGEFILL_HOME", str(tmp_path / "home"))
    return tmp_path


def test_a_default_model_is_shipped_small_and_consistent(fresh_user):
    index = shipped_index()
    default = index["default"]
    assert default and current_model() == default and resolve_model("current") == SHIPPED_DIR / default
    folder = SHIPPED_DIR / default
    weights = folder / "checkpoints" / "last.pt"
    assert weights.stat().st_size <= 10 * 2 ** 20                      # at most 10 MB in the tree
    meta = json.loads((folder / "config.json").read_text())
    cfg = run_model_config(meta)
    assert meta["architecture_hash"] == cfg.architecture_hash() == index["models"][default]["architecture_hash"]
    assert ModelConfig.preset(cfg.name).architecture_hash() == cfg.architecture_hash()  # the preset it names
    ckpt = load_checkpoint(weights, architecture_hash=cfg.architecture_hash())       # weights_only=True inside
    assert set(ckpt["models"]) == {"g1", "g2"}
    bundle = load_model("current")
    assert bundle.model_config.g2_residual_fill and not bundle.edge_generator.training
    card = (folder / "MODEL_CARD.md").read_text()
    for needed in ("GDAL FillNodata", "Telea", "Navier", "validation", "test", "python -m models.train"):
        assert needed in card, needed


MIN_GAIN_SE = 2.0      # mean gain over the prefill, in standard errors over the pairs (measured: 3.2)
WORST_RATIO = 1.05     # no pair's hole L1 above 1.05 x the prefill's (measured worst: 1.017; all 128 pairs: 1.033)


@pytest.fixture(scope="module")
def scored_test_pairs(prepared_store_template):
    """The 16 test pairs (first of every mask kind and hole-ratio bin) and the prefill's records."""
    ds = EvalPairs(prepared_store_template, "test")
    keep = select_pairs(ds, 1)
    return ds, keep, score_pairs(ds, keep, None, ("harmonic",))


def _gain_over_prefill(model_records: list[dict], prefill_records: list[dict]) -> tuple[float, float, float]:
    """(mean, standard error, worst) of the per-pair hole-L1 ratio model / prefill."""
    ratios = np.array([m["hole_l1"] / p["hole_l1"] for m, p in zip(model_records, prefill_records, strict=True)])
    return float(ratios.mean()), float(ratios.std(ddof=1) / np.sqrt(len(ratios))), float(ratios.max())


def _improves_on_prefill(mean: float, se: float) -> bool:
    return 1 - mean > MIN_GAIN_SE * se and se > 0


def test_shipped_model_improves_on_its_own_prefill_on_real_test_patches(scored_test_pairs, fresh_user):
    ds, keep, prefill = scored_test_pairs
    mean, se, worst = _gain_over_prefill(score_pairs(ds, keep, ModelFill.load("current"), ("model",)), prefill)
    assert _improves_on_prefill(mean, se), (f"hole L1 / prefill's: mean {mean:.4f}, gain {(1 - mean) / se:.2f} standard "
                                            f"errors ({se:.4f}) vs threshold {MIN_GAIN_SE}")
    assert worst < WORST_RATIO, f"worst pair's hole L1 / prefill's {worst:.4f} vs threshold {WORST_RATIO}"


def test_an_untrained_g2_does_not_pass_for_the_shipped_model(scored_test_pairs, fresh_user):
    """The criterion above rejects the shipped G1 with a fresh G2 (zero residual: the prefill)."""
    from models.networks import build_networks

    ds, keep, prefill = scored_test_pairs
    bundle = load_model("current")
    torch.manual_seed(0)
    g2 = build_networks(bundle.model_config)["g2"].eval()
    fill = ModelFill(bundle.edge_generator, g2, bundle.radiometry, bundle.edge_params, bundle.patch_size)
    mean, se, _ = _gain_over_prefill(score_pairs(ds, keep, fill, ("model",)), prefill)
    assert mean == pytest.approx(1.0, abs=1e-4) and not _improves_on_prefill(mean, se), (mean, se)


def test_inpaint_with_no_model_option_uses_the_shipped_model(fresh_user):
    from typer.testing import CliRunner

    from flows.cli import app
    from pipeline.scenes import read_scene

    scene = read_scene("LE07_OLINDA_STARS")
    rgb = scene.rgb[:, :200, :200].copy()
    hole = np.zeros((200, 200), bool)
    hole[:, 90:100] = True  # a scan-gap-like stripe
    src = fresh_user / "olinda_gap.tif"
    with rasterio.open(src, "w", driver="GTiff", width=200, height=200, count=3, dtype="uint8", nodata=0,
                       crs=f"EPSG:{scene.epsg}", transform=scene.transform) as dst:
        dst.write(np.where(hole, 0, np.maximum(rgb, 1)).astype(np.uint8))
    out = fresh_user / "out.tif"
    r = CliRunner().invoke(app, ["inpaint", str(src), str(out)])
    assert r.exit_code == 0, r.output
    with rasterio.open(out) as o:
        filled = o.read()
    truth = np.maximum(rgb, 1).astype(np.float64)
    np.testing.assert_array_equal(filled[:, ~hole], truth[:, ~hole])    # known pixels kept
    err = np.abs(filled[:, hole] - truth[:, hole]).mean()
    mean_colour = truth[:, ~hole].mean(axis=1, keepdims=True)          # a constant fill, per band
    constant_err = np.abs(mean_colour - truth[:, hole]).mean()
    sides = (truth[:, :, 89:90] + truth[:, :, 100:101]) / 2             # the stripe's two edge columns
    sides_err = np.abs(np.broadcast_to(sides, (3, 200, 10)) - truth[:, :, 90:100]).mean()
    # measured: 7.8 vs 10.0 and 9.0 DN (a low-contrast coast: the mean colour is not far off)
    assert err < 0.9 * constant_err and err < sides_err, (err, constant_err, sides_err)
    assert json.loads((fresh_user / "out.stac.json").read_text())["properties"]["edgefill:model"] == shipped_index()["default"]
    torch.set_num_threads(1)

"""Evaluation metrics vs hand-computed values, baselines, and the harness on real test pairings."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from models.baselines import BASELINES, run_baseline
from models.evaluate import _bin_label, evaluate, model_metrics, select_pairs, write_report
from models.metrics import EdgeCounts, image_metrics, l1, psnr, ssim, ssim_map
from pipeline.dataset import InpaintingDataset

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = pytest.mark.usefixtures("single_thread")


def test_psnr_l1_on_hole_and_composite_hand_computed():
    truth = np.zeros((3, 16, 16))
    out = np.zeros((3, 16, 16))
    out[:, :2, :2] = 0.1          # error 0.1 inside the 4-px hole
    out[:, 9, 9] = 0.5            # error outside the hole: the composite replaces it by the truth
    mask = np.zeros((16, 16), bool)
    mask[:2, :2] = True
    m = image_metrics(out, truth, mask)
    assert m["hole_l1"] == pytest.approx(0.1)
    assert m["hole_psnr"] == pytest.approx(10 * math.log10(1 / 0.01))          # 20 dB
    assert m["comp_l1"] == pytest.approx(0.1 * 4 / 256)                         # composite: truth outside
    assert m["comp_psnr"] == pytest.approx(10 * math.log10(1 / (0.01 * 4 / 256)))
    assert l1(out, truth) == pytest.approx((0.1 * 4 + 0.5) / 256)
    assert psnr(truth, truth) == 100.0                                          # capped, not inf


def test_ssim_hand_computed_on_constant_images():
    """Constant images: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01)^2."""
    a, b = 0.2, 0.6
    x, y = np.full((3, 16, 16), a), np.full((3, 16, 16), b)
    c1 = 0.01 ** 2
    assert ssim(y, x) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
    assert ssim(x, x) == pytest.approx(1.0)


def test_ssim_map_equals_scikit_image_reference():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    truth = rng.random((3, 40, 48))
    pred = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1)
    ref = np.mean([structural_similarity(truth[c], pred[c], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, full=True)[1] for c in range(3)], axis=0)
    assert np.allclose(ssim_map(pred, truth), ref, atol=1e-6)


def test_edge_precision_recall_f1_hand_computed():
    raw = np.zeros((4, 4))
    raw[0, :] = 1                      # 4 true edges, 2 in the hole (cols 0-1)
    gen = np.zeros((4, 4))
    gen[0, 0] = 0.9                    # TP
    gen[1, 1] = 0.6                    # FP
    gen[2, 0] = 0.4                    # below threshold
    gen[0, 3] = 1.0                    # outside the hole: ignored
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True
    c = EdgeCounts.of(gen, raw, mask)
    assert (c.tp, c.fp, c.fn) == (1, 1, 1)
    s = (c + EdgeCounts(tp=1)).scores()  # micro-average over pairs: tp 2, fp 1, fn 1
    assert s["edge_precision"] == pytest.approx(2 / 3) and s["edge_recall"] == pytest.approx(2 / 3)
    assert s["edge_f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_fill_only_the_hole_and_follow_a_smooth_ramp(name):
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    img = np.stack([xx, yy, np.full_like(xx, 0.5)]).astype(np.float32)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 24:44] = True
    out = run_baseline(name, img * (1 - mask), mask)
    assert np.abs(out - img)[:, ~mask].max() < 1e-4          # known pixels untouched
    assert np.abs(out - img)[:, mask].mean() < 0.05          # a ramp is easy to interpolate
    with pytest.raises(ValueError, match="expected rgb"):
        run_baseline(name, img, mask[:10])


def test_harness_scores_model_and_baselines_on_fixed_test_pairings(prepared_store_template, trained_run, tmp_path):
    run_dir, _ = trained_run
    ds = InpaintingDataset(prepared_store_template, "test", augment=False)
    keep = select_pairs(ds, 1)
    cells = [(str(ds.mask_kind[m]), _bin_label(float(ds.mask_ratio[m]))) for _, m, _ in ds.pairings[keep]]
    assert len(cells) == len(set(cells)) >= 10  # exactly one pair per (kind, bin) cell
    assert select_pairs(InpaintingDataset(prepared_store_template, "test", augment=False), 1) == keep  # fixed
    result = evaluate(prepared_store_template, run_dir, pairs_per_bin=1)
    methods = {r["method"] for r in result.rows}
    assert methods == {"model", "telea", "ns", "gdal"}
    kinds = {r["mask_kind"] for r in result.rows if r["mask_kind"] != "all"}
    assert {"irregular", "slc_off", "cloud"} <= kinds
    model_rows = [r for r in result.rows if r["method"] == "model" and r["ratio_bin"] != "all"]
    assert all(r["n"] >= 1 and 0 <= r["edge_recall"] <= 1 for r in model_rows if not math.isnan(r["edge_recall"]))
    assert sum(r["n"] for r in model_rows) == len(keep)
    for m in ("model", "telea"):
        o = result.overall[m]
        assert o["n"] == len(keep) and o["comp_psnr"] > o["hole_psnr"] and o["comp_l1"] < o["hole_l1"]
    files = write_report(result, tmp_path / "eval")
    rows = list(csv.DictReader(open(files["csv"])))
    assert len(rows) == len(result.rows) and rows[0]["method"] in methods
    md = open(files["md"]).read()
    assert "| method | mask_kind | ratio_bin |" in md and "sigma 1.5" in md
    metrics = model_metrics(result)
    assert metrics["hole_psnr"] == json.load(open(files["json"]))["overall"]["model"]["hole_psnr"]


def test_evaluate_bad_input(prepared_store_template, real_store):
    from pipeline.store import StoreError

    with pytest.raises(StoreError):
        evaluate(real_store, None)
    with pytest.raises(ValueError, match="needs --model"):
        evaluate(prepared_store_template, None, methods=("model",))

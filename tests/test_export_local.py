"""The embedded default: bundled real scenes -> sharded Zarr store (real data, real Zarr)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from affine import Affine

from pipeline.export import export_landsat
from pipeline.export_config import ExportConfig, ExportError
from pipeline.scenes import read_scene, scenes_with_role
from pipeline.store import Radiometry, open_store, patch_indices


def tree_digest(path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def local_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "landsat.zarr"
    summary = export_landsat(ExportConfig(out=out, shard_patches=8))
    return out, summary


def test_store_holds_real_georeferenced_patches(local_export):
    out, summary = local_export
    g = open_store(out)
    n = g["images"].shape[0]
    assert summary.complete and summary.n_patches == n == summary.n_candidates
    assert g["images"].dtype == np.uint8 and g["images"].shards == (8, 3, 256, 256)
    assert Radiometry(**g.attrs["radiometry"]).scale == pytest.approx(1 / 255)
    valid = g["valid"][:]
    assert valid.sum() == summary.n_valid > 30
    for i in np.flatnonzero(valid)[::7]:  # pixels equal the scene window at the stored transform
        scene = read_scene(str(g["scene_id"][i]))
        col, row = ~scene.transform @ tuple(g["transform"][i][[2, 5]])
        r, c = int(round(row)), int(round(col))
        np.testing.assert_array_equal(g["images"][i], scene.rgb[:, r:r + 256, c:c + 256])
        assert Affine(*g["transform"][i]) == scene.transform @ Affine.translation(c, r)
        assert g["epsg"][i] == scene.epsg and g["sensor"][i] == scene.entry.sensor
    keys = list(zip(g["scene_id"][:].tolist(), map(tuple, g["transform"][:].tolist())))
    assert len(set(keys)) == len(keys)  # no duplicates
    assert (g["skip_reason"][:][~valid] == "nodata").all() and summary.skipped["nodata"] == (~valid).sum()


def test_scene_roles_and_splits(local_export):
    out, _ = local_export
    g = open_store(out)
    exported = set(g["scene_id"][:].tolist())
    assert "LE07_140041_20001030_EVEREST" not in exported  # holdout never exported by default
    assert not exported & {s.id for s in scenes_with_role("slc_off", "slc_off_mask")}
    want = {s.id: s.role for s in scenes_with_role("train", "validation", "test")}
    for sid, split in zip(g["scene_id"][:], g["split"][:]):
        assert want[sid] == split  # split by scene, never by neighbouring patch
    assert all(len(patch_indices(g, split)) > 0 for split in ("train", "validation", "test"))
    stretch = g.attrs["scenes"]["LC08_224078_20200518_ITAIPU"]["stretch"]
    assert len(stretch) == 3 and stretch[0][0] < stretch[0][1]  # Landsat 8 stretch recorded


def test_stac_and_quicklook(local_export):
    import pystac
    from PIL import Image

    out, summary = local_export
    collection = pystac.Collection.from_file(summary.stac_catalog)
    items = {it.id: it for it in collection.get_items()}
    assert set(items) == set(open_store(out)["scene_id"][:].tolist())
    item = items["LT05_040028_20060706"]
    assert item.properties["proj:epsg"] == 32612 and item.datetime.year == 2006
    assert -113 < item.bbox[0] < item.bbox[2] < -112  # Montana, in lon/lat
    img = Image.open(summary.quicklook)
    assert img.size[0] >= 96 and np.asarray(img).std() > 10


def test_rerun_is_a_noop_and_other_config_is_refused(local_export):
    out, _ = local_export
    before = tree_digest(out)
    again = export_landsat(ExportConfig(out=out, shard_patches=8))
    assert again.n_valid == open_store(out)["valid"][:].sum()
    with pytest.raises(ExportError, match="another config"):
        export_landsat(ExportConfig(out=out, shard_patches=8, seed=1))
    assert tree_digest(out) == before


def test_count_target_stops_at_whole_shards(tmp_path):
    s = export_landsat(ExportConfig(out=tmp_path / "s.zarr", shard_patches=4, count=10))
    g = open_store(tmp_path / "s.zarr")
    assert 10 <= s.n_valid < 10 + 4 and g["images"].shape[0] % 4 == 0 and g["export_done"][:].all()
    assert len(set(g["scene_id"][:].tolist())) >= 5  # stratified across scenes


def test_dataset_entry_overrides_scenes_and_splits(tmp_path):
    s = export_landsat(ExportConfig(out=tmp_path / "d.zarr", dataset="bundled_two_scenes"))
    g = open_store(tmp_path / "d.zarr")
    entry = json.loads((Path(__file__).parent.parent / "data_catalog/datasets/bundled_two_scenes.json").read_text())
    assert set(g["scene_id"][:].tolist()) == set(entry["scenes"])
    assert {str(k): str(v) for k, v in zip(g["scene_id"][:], g["split"][:])} == entry["splits"]
    assert s.n_test > 0 and s.n_train > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=0), "count must be a positive"),
    (dict(scenes=["LE07_039028_20100702_SLCOFF"]), "SLC-off"),
    (dict(scenes=["NOPE"]), "unknown scene"),
    (dict(dataset="nope"), "unknown dataset"),
    (dict(start="2003-01-01", end="2002-01-01"), "date window is empty"),
    (dict(references=-1), "references"),
    (dict(references=1, reference_window_days=0), "reference_window_days"),
])
def test_bad_input_is_refused_and_writes_nothing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_landsat(ExportConfig(out=tmp_path / "bad.zarr", **kwargs))
    assert list(tmp_path.iterdir()) == []


def test_existing_non_store_output_is_refused(tmp_path):
    out = tmp_path / "x.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a resumable edgefill export store"):
        export_landsat(ExportConfig(out=out))
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    with pytest.raises(ExportError, match="not a resumable"):
        export_landsat(ExportConfig(out=tmp_path / "plain.zarr"))


def test_cli_export_local_and_bad_count(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "cli.zarr"
    ok = CliRunner().invoke(app, ["export", "--source", "local", "--out", str(out), "--count", "12",
                                  "--shard-patches", "4"])
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.output[ok.output.index("{"):])
    assert summary["n_valid"] >= 12 and open_store(out)["valid"][:].sum() == summary["n_valid"]
    bad = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "zero.zarr"), "--count", "0"])
    assert bad.exit_code == 2 and "count must be a positive" in bad.output
    assert not (tmp_path / "zero.zarr").exists()


# -- reference acquisitions (other dates of the same footprint, same pixel grid) -------------------

TAIZHOU = ("LE07_TAIZHOU_20000317", "LE07_TAIZHOU_20030206")


def _window(scene_id: str, transform) -> tuple[np.ndarray, np.ndarray]:
    scene = read_scene(scene_id)
    col, row = ~scene.transform @ (transform[2], transform[5])
    r, c = int(round(row)), int(round(col))
    return scene.rgb[:, r:r + 256, c:c + 256], scene.valid[r:r + 256, c:c + 256]


def test_taizhou_patches_carry_the_other_date_as_reference(tmp_path):
    """references=1 over the real Taizhou pair (2000 / 2003, one grid) and a scene with no other date:
    each Taizhou patch's reference is the other date's pixels at the same window, exactly; the
    lone scene's patches get an empty slot."""
    lone = "LT05_040028_20060706"
    out = tmp_path / "ref.zarr"
    cfg = ExportConfig(out=out, scenes=[*TAIZHOU, lone], references=1, reference_window_days=1200, shard_patches=4)
    summary = export_landsat(cfg)
    g = open_store(out)
    from pipeline.store import read_meta

    assert read_meta(g).references == 1 and g["reference"].shape == (summary.n_patches, 1, 3, 256, 256)
    assert g["reference"].dtype == g["images"].dtype == np.uint8
    ids, valid = g["scene_id"][:], g["valid"][:]
    ref, ref_valid = g["reference"][:], g["reference_valid"][:]
    acquired, sensor, ref_ids = g["reference_acquired"][:], g["reference_sensor"][:], g["reference_scene_id"][:]
    seen = {sid: 0 for sid in (*TAIZHOU, lone)}
    for i in np.flatnonzero(valid):
        sid = str(ids[i])
        seen[sid] += 1
        if sid == lone:
            assert not ref_valid[i].any() and not ref[i].any()
            assert (acquired[i][0], sensor[i][0], ref_ids[i][0]) == ("", "", "")
            continue
        other = TAIZHOU[1 - TAIZHOU.index(sid)]
        want_pixels, want_valid = _window(other, g["transform"][i])
        np.testing.assert_array_equal(ref[i, 0], want_pixels)
        assert want_valid.all() and ref_valid[i, 0].all()
        np.testing.assert_array_equal(g["images"][i], _window(sid, g["transform"][i])[0])
        assert not np.array_equal(ref[i, 0], g["images"][i])  # another date indeed
        assert (acquired[i][0], sensor[i][0], ref_ids[i][0]) == (
            {TAIZHOU[0]: "2000-03-17", TAIZHOU[1]: "2003-02-06"}[other], "LE07", other)
    assert seen[TAIZHOU[0]] == seen[TAIZHOU[1]] == 4 and seen[lone] > 0


def test_reference_window_and_empty_slots(tmp_path):
    """The Taizhou dates lie 1056 days apart: outside a 400-day window nothing is taken; with R = 2
    the second slot stays empty (one other date); without references the config hash is unchanged."""
    near = export_landsat(ExportConfig(out=tmp_path / "near.zarr", scenes=list(TAIZHOU), references=2))
    g = open_store(tmp_path / "near.zarr")
    assert near.n_valid == 8 and g["reference_valid"].shape == (8, 2, 256, 256)
    assert not g["reference_valid"][:].any() and (g["reference_acquired"][:] == "").all()
    export_landsat(ExportConfig(out=tmp_path / "far.zarr", scenes=list(TAIZHOU), references=2,
                                reference_window_days=1100))
    g = open_store(tmp_path / "far.zarr")
    assert g["reference_valid"][:, 0].all() and not g["reference_valid"][:, 1].any()
    assert set(g["reference_sensor"][:, 0].tolist()) == {"LE07"} and set(g["reference_sensor"][:, 1].tolist()) == {""}
    assert "references" not in ExportConfig().data_config()
    assert ExportConfig(references=1).data_config()["reference_window_days"] == 400

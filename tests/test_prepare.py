"""prepare-dataset on REAL patches: edges, masks, pairings, idempotence, flow, CLI, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from prepare_helpers import small_prepare_config
from typer.testing import CliRunner

from pipeline.edges import edges_for_batch
from pipeline.masks import MaskError, ratio_bin
from pipeline.pairings import PairingConfig
from pipeline.prepare import DaskConfig, compute_edges, prepare_store
from pipeline.store import Radiometry, StoreError, create_store, open_store, patch_indices, store_radiometry

THREADS = DaskConfig(n_workers=1, threads_per_worker=2)


@pytest.fixture(scope="module")
def prepared(real_store_template, tmp_path_factory):
    import shutil

    path = tmp_path_factory.mktemp("prep") / "real.zarr"
    shutil.copytree(real_store_template, path)
    summary = prepare_store(path, small_prepare_config(), THREADS)
    return path, summary


def test_edges_written_match_the_edge_function(prepared):
    path, summary = prepared
    g = open_store(path)
    assert summary.shards_computed == summary.shards_total == g["export_done"].shape[0] and summary.shards_skipped == 0
    assert g["edges"].shape == (g["images"].shape[0], 1, 256, 256) and g["edges"].dtype == np.uint8
    assert g["edges"].shards == (g["images"].shards[0], 1, 256, 256)  # sharded like images
    ref = edges_for_batch(store_radiometry(g).to_unit(g["images"][:]), small_prepare_config().edges)
    np.testing.assert_array_equal(g["edges"][:], ref)
    assert g["edges_done"][:].all()
    assert g.attrs["prepare"]["edge_params"]["sigma"] == 2.0 and g.attrs["prepare"]["complete"]


def test_masks_and_pairings_valid(prepared):
    path, summary = prepared
    g = open_store(path)
    masks, kinds, ratios, splits = g["masks"][:], g["masks_kind"][:], g["masks_ratio"][:], g["masks_split"][:]
    assert masks.shape == (summary.n_masks, 256, 256) and set(np.unique(masks)) <= {0, 1}
    np.testing.assert_allclose(ratios, masks.reshape(len(masks), -1).mean(1), atol=1e-6)
    assert set(splits) == {"train", "validation", "test"} and "pairings/train" not in g  # training draws its own
    assert summary.n_train_images == len(patch_indices(g, "train"))
    for name in ("validation", "test"):
        table = g[f"pairings/{name}"][:]
        assert table.dtype == np.int64 and table.shape[1] == 3 and not table[:, 2].any()
        assert set(table[:, 0]) <= set(patch_indices(g, name).tolist())
        assert set(splits[table[:, 1]]) == {name}  # evaluation masks never come from training's
        # the table covers every (kind, bin) of its split's masks, irregular in all five bins
        cells = {(kinds[m], int(b)) for m, b in zip(table[:, 1], ratio_bin(ratios[table[:, 1]]))}
        assert {("irregular", b) for b in range(5)} <= cells
        assert {("slc_off", b) for b in range(3)} <= cells and ("slc_off", 4) not in cells
    # no mask (as pixels) serves both training and evaluation
    train_set = {m.tobytes() for m in masks[splits == "train"]}
    assert not train_set & {m.tobytes() for m in masks[splits != "train"]}


def test_rerun_is_idempotent_and_deterministic(prepared, tmp_path, real_store_template):
    path, first = prepared
    g = open_store(path)
    before = {k: g[k][:] for k in ("edges", "masks", "masks_split", "pairings/validation", "pairings/test")}
    again = prepare_store(path, small_prepare_config(), THREADS)
    assert again.shards_computed == 0 and again.shards_skipped == first.shards_total and not again.masks_rebuilt
    g = open_store(path)
    for k, v in before.items():
        np.testing.assert_array_equal(g[k][:], v)
    # another store, same seed -> identical masks and pairings; another seed -> different
    import shutil

    other = tmp_path / "other.zarr"
    shutil.copytree(real_store_template, other)
    prepare_store(other, small_prepare_config(seed=1), THREADS)
    g2 = open_store(other)
    assert not np.array_equal(g2["pairings/validation"][:], before["pairings/validation"])
    prepare_store(other, small_prepare_config(seed=0), THREADS)  # masks config changed -> rebuilt
    g2 = open_store(other)
    for k in ("masks", "masks_split", "pairings/validation", "pairings/test"):
        np.testing.assert_array_equal(g2[k][:], before[k])
    assert not [p.name for p in other.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_partially_exported_store_prepares_exported_shards_only(real_store):
    g = open_store(real_store, "r+")
    g["export_done"][1] = 0
    summary = compute_edges(real_store, dask=THREADS)
    assert summary["shards_computed"] == summary["shards_total"] - 1 and summary["shards_not_exported"] == 1
    done = open_store(real_store)["edges_done"][:]
    assert done.tolist() == [1, 0] + [1] * (len(done) - 2)
    g["export_done"][1] = 1
    assert compute_edges(real_store, dask=THREADS)["shards_computed"] == 1


def test_store_without_images(tmp_path):
    g = create_store(tmp_path / "s.zarr", n_patches=2, bands=["r", "g", "b"], radiometry=Radiometry(),
                     source="t", export_config={})
    del g["images"]
    with pytest.raises(StoreError, match=r"lacks array\(s\) \['images'\]"):
        prepare_store(tmp_path / "s.zarr", small_prepare_config(), THREADS)
    assert "edges" not in zarr.open_group(str(tmp_path / "s.zarr"))


def test_wrong_shapes_and_sizes(tmp_path, real_store):
    g = create_store(tmp_path / "w.zarr", n_patches=2, bands=["r", "g", "b"], radiometry=Radiometry(),
                     source="t", export_config={})
    del g["images"]
    g.create_array("images", shape=(2, 4, 256, 256), dtype="uint8")
    with pytest.raises(StoreError, match=r"\(N, 3, P, P\)"):
        prepare_store(tmp_path / "w.zarr", small_prepare_config(), THREADS)
    cfg = small_prepare_config()
    cfg = cfg.model_copy(update={"masks": cfg.masks.model_copy(update={"size": 128})})
    with pytest.raises(MaskError, match="mask size 128 != the store's patch size 256"):
        prepare_store(real_store, cfg, THREADS)
    assert "masks" not in open_store(real_store) and "pairings" not in open_store(real_store)


def test_required_bin_that_cannot_be_filled(real_store):
    cfg = small_prepare_config()
    cfg = cfg.model_copy(update={"pairings": PairingConfig(require_bins=["irregular", "slc_off"])})
    with pytest.raises(MaskError, match=r"slc_off 40-50%.*slc_off 50-60%"):
        prepare_store(real_store, cfg, THREADS)
    assert "pairings" not in open_store(real_store)  # nothing half-written


def test_unreachable_scheduler_is_a_clear_error(real_store):
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
        compute_edges(real_store, dask=DaskConfig(scheduler="tcp://127.0.0.1:1", connect_timeout_s=2))


@pytest.mark.slow
def test_flow_and_deployment(prefect_harness, real_store):
    from flows.prepare import deployments, prepare_dataset_flow
    from pipeline.prepare import PrepareDatasetConfig

    out = prepare_dataset_flow(PrepareDatasetConfig(store=real_store, seed=0, **small_prepare_config().model_dump()))
    assert out["store"] == str(real_store) and out["shards_computed"] == out["shards_total"]
    assert out["n_test_pairs"] > 0 and out["masks_rebuilt"]
    json.dumps(out)  # a small summary, never arrays
    assert "pairings" in open_store(real_store)
    (dep,) = deployments()
    assert dep.name == "default"
    assert PrepareDatasetConfig.model_validate(dep.parameters.get("config", {})).store == Path("./demo_out/landsat.zarr")


def test_cli_prepare(real_store, tmp_path):
    from flows.cli import app

    cfg = tmp_path / "cfg.json"
    cfg.write_text(small_prepare_config().model_dump_json())
    r = CliRunner().invoke(app, ["prepare", str(real_store), "--config", str(cfg), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shards_computed"] > 0
    assert open_store(real_store).attrs["prepare"]["config"]["pairings"]["seed"] == 3
    r = CliRunner().invoke(app, ["prepare", str(tmp_path / "missing.zarr")])
    assert r.exit_code == 2 and "does not exist" in r.output

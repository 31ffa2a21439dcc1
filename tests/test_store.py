import numpy as np
import pytest
import zarr

from pipeline.edges import EdgeParams
from pipeline.prepare import DaskConfig, prepare_store
from pipeline.store import (DIMENSIONS, Radiometry, StoreError, config_hash, create_store, grow_store, open_store,
                            patch_indices, read_meta, update_prepare, write_meta)
from prepare_helpers import small_prepare_config


def test_fixture_store_is_real_and_complete(real_store):
    g = open_store(real_store)
    assert g["images"].shape[1:] == (3, 256, 256)
    imgs = g["images"][:]
    # real imagery: every patch has texture (no constant/empty tiles)
    assert all(imgs[i].std() > 3 for i in range(len(imgs)))
    assert set(g["split"][:]) == {"train", "validation", "test"}
    assert sum(len(patch_indices(g, split)) for split in ("train", "validation", "test")) == len(imgs)


def test_open_store_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nope.zarr")
    g = create_store(tmp_path / "s.zarr", n_patches=3, bands=["r", "g", "b"], radiometry=Radiometry(),
                     source="t", export_config={})
    del g["valid"]
    with pytest.raises(StoreError, match="lacks"):
        open_store(tmp_path / "s.zarr")


def test_grow_and_radiometry_roundtrip(tmp_path):
    g = create_store(tmp_path / "s.zarr", n_patches=5, shard_patches=4, bands=["r", "g", "b"],
                     radiometry=Radiometry(), source="t", export_config={"a": 1})
    grow_store(g, 9)
    assert g["images"].shape[0] == 9 and g["export_done"].shape == (3,)
    r = Radiometry(dtype="uint16", scale=2.75e-05, offset=-0.2)
    unit = np.array([0.0, 0.25, 1.0], dtype=np.float32)
    np.testing.assert_allclose(r.to_unit(r.from_unit(unit)), unit, atol=3e-5)


# -- dimension names: the store opens in xarray without edgefill ------------------------------

def _all_arrays(group, prefix=""):
    """Every array of a group and its subgroups: {path: array}."""
    out = {}
    for name, node in group.members():
        if isinstance(node, zarr.Array):
            out[prefix + name] = node
        else:
            out.update(_all_arrays(node, prefix + name + "/"))
    return out


@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
def test_prepared_store_opens_in_xarray_with_named_dimensions(real_store):
    """Every array (export's, prepare's, the mask library, the pairings) names its dimensions, and
    ``xarray.open_zarr`` - no edgefill involved - returns the store's own values."""
    xr = pytest.importorskip("xarray")
    prepare_store(real_store, small_prepare_config(), DaskConfig(n_workers=1, threads_per_worker=2))
    g = open_store(real_store)
    arrays = _all_arrays(g)
    assert {"images", "edges", "masks", "pairings/validation", "pairings/test"} <= set(arrays)
    for path, arr in arrays.items():
        assert arr.metadata.dimension_names == DIMENSIONS[path], path
    ds = xr.open_zarr(real_store)  # plain call: not consolidated, so xarray only warns about that
    assert ds["images"].dims == ("patch", "band", "y", "x") and ds["images"].dtype == np.uint8
    np.testing.assert_array_equal(ds["images"].values, g["images"][:])
    np.testing.assert_array_equal(ds["edges"].values, g["edges"][:])
    assert ds["scene_id"].values.tolist() == g["scene_id"][:].tolist()
    assert ds.sizes["patch"] == g["images"].shape[0] and ds.sizes["mask"] == g["masks"].shape[0]
    assert ds.attrs["radiometry"] == read_meta(g).radiometry.model_dump(mode="json")
    pairs = xr.open_zarr(real_store, group="pairings", consolidated=False)
    np.testing.assert_array_equal(pairs["test"].values, g["pairings/test"][:])


def test_exported_store_opens_in_xarray(tmp_path):
    """The export's own arrays (skip_reason, export_plan, the re-created images) are named too."""
    xr = pytest.importorskip("xarray")
    from pipeline.export import export_landsat
    from pipeline.export_config import ExportConfig

    out = tmp_path / "e.zarr"
    export_landsat(ExportConfig(out=out, shard_patches=8, count=8))
    g = open_store(out)
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["skip_reason"].dims == ("patch",) and ds["export_plan"].dims == ("candidate",)
    assert ds["export_done"].dims == ("shard",)
    np.testing.assert_array_equal(ds["images"].values, g["images"][:])


def test_store_without_dimension_names_still_opens(tmp_path):
    """Stores written before dimension names: edgefill reads them as before."""
    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="w-", zarr_format=3)
    g.create_array("images", shape=(2, 3, 8, 8), dtype="uint8", chunks=(1, 3, 8, 8), fill_value=0)
    g.create_array("transform", shape=(2, 6), dtype="float64", chunks=(2, 6), fill_value=0.0)
    g.create_array("epsg", shape=(2,), dtype="int32", chunks=(2,), fill_value=0)
    for name in ("scene_id", "acquired", "sensor", "split"):
        g.create_array(name, shape=(2,), dtype=str, chunks=(2,), fill_value="")
    g.create_array("valid", shape=(2,), dtype="bool", chunks=(2,), fill_value=False)
    g.create_array("export_done", shape=(1,), dtype="uint8", chunks=(1,), fill_value=0)
    g["valid"][:] = [True, False]
    g["split"][:] = np.array(["train", "test"])
    g.attrs.update({"edgefill_store_version": 1, "patch_size": 8, "shard_patches": 2, "bands": ["r", "g", "b"],
                    "radiometry": Radiometry().model_dump(), "source": "old", "export_config": {},
                    "config_hash": "x", "created": "2024-01-01T00:00:00+00:00",
                    "prepare": {"edge_params": {"sigma": 1.5}, "config": {"pairings": {"seed": 7}}}})
    old = open_store(tmp_path / "old.zarr", "r+")
    assert old["images"].metadata.dimension_names is None
    meta = read_meta(old)
    assert meta.prepare.edges().sigma == 1.5 and meta.prepare.pairings().seed == 7
    assert patch_indices(old, "train").tolist() == [0]
    grow_store(old, 3)
    assert old["images"].shape[0] == 3 and old["export_done"].shape == (2,)


# -- metadata: one typed model --------------------------------------------------------------

def test_metadata_is_typed_and_written_only_when_valid(tmp_path):
    g = create_store(tmp_path / "s.zarr", n_patches=3, shard_patches=2, bands=["r", "g", "b"],
                     radiometry=Radiometry(dtype="uint16", scale=1e-4), source="t", export_config={"a": 1})
    meta = read_meta(g)
    assert isinstance(meta.radiometry, Radiometry) and meta.radiometry.scale == 1e-4
    assert meta.shard_patches == 2 and meta.patch_size == 256 and meta.config_hash == config_hash({"a": 1})
    assert not meta.export_summary.complete and meta.prepare.edge_params is None  # defaults before export/prepare
    assert "prepare" not in g.attrs  # create_store writes only what it knows
    # dimension names survive a resize
    grow_store(g, 5)
    assert g["images"].metadata.dimension_names == ("patch", "band", "y", "x")

    write_meta(g, export_failures=["shard 0: OSError: boom"], scenes={"S1": {"license": "CC0"}})
    update_prepare(g, edge_params=EdgeParams(sigma=3.0), masks_hash="h1")
    update_prepare(g, complete=True)  # merges: the earlier fields stay
    again = read_meta(open_store(tmp_path / "s.zarr"))
    assert again.export_failures == ["shard 0: OSError: boom"] and again.scenes["S1"]["license"] == "CC0"
    assert again.prepare.edges().sigma == 3.0 and again.prepare.masks_hash == "h1" and again.prepare.complete
    assert g.attrs["prepare"]["edge_params"]["sigma"] == 3.0  # the on-disk layout is plain JSON

    with pytest.raises(StoreError, match="unknown store metadata field"):
        write_meta(g, colour="red")
    with pytest.raises(StoreError, match="bad metadata patch_size"):
        write_meta(g, patch_size=-1)
    assert read_meta(g).patch_size == 256  # a refused write changes nothing
    g.attrs["radiometry"] = {"dtype": "int7"}
    with pytest.raises(StoreError, match="bad metadata radiometry.dtype"):
        read_meta(g)


def test_no_module_but_the_store_reads_or_writes_raw_attrs():
    """The metadata has one reader/writer: pipeline/store.py (read_meta, write_meta, update_prepare)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    raw = [f"{path.relative_to(repo)}:{n}" for folder in ("pipeline", "models", "flows", "bench")
           for path in sorted((repo / folder).rglob("*.py")) if path != repo / "pipeline" / "store.py"
           for n, line in enumerate(path.read_text().splitlines(), 1)
           if ".attrs[" in line or ".attrs.get(" in line or ".attrs.update(" in line]
    assert raw == [], raw


# -- optional reference acquisitions ----------------------------------------------------------

def _reference_store(path, n=5, r=2, shard=2, dtype="uint16"):
    return create_store(path, n_patches=n, shard_patches=shard, patch_size=16, bands=["r", "g", "b"],
                        radiometry=Radiometry(dtype=dtype, scale=1e-4), source="t", export_config={"a": 1},
                        references=r)


@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
def test_reference_arrays_round_trip_and_open_in_xarray(tmp_path):
    """R references per patch: pixels in the store's dtype, validity (1 = valid), dates, sensors and
    ids read back as written; a grown store keeps them; xarray names their dimensions."""
    xr = pytest.importorskip("xarray")
    from pipeline.shard_io import read_shard, write_shard
    from pipeline.store import REFERENCE_ARRAYS, per_patch_arrays

    g = _reference_store(tmp_path / "r.zarr")
    assert read_meta(g).references == 2 and g.attrs["references"] == 2
    assert set(per_patch_arrays(g)) >= set(REFERENCE_ARRAYS)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 10000, (5, 2, 3, 16, 16), dtype=np.uint16)
    valid = rng.random((5, 2, 16, 16)) > 0.3
    valid[:, 1] = False  # slot 1 empty everywhere
    acquired = np.array([["2001-07-06", ""]] * 5)
    sensor = np.array([["LC08", ""]] * 5)
    ids = np.array([[f"S{i}", ""] for i in range(5)])
    assert g["reference"].dtype == np.uint16 and g["reference_valid"].dtype == bool
    assert g["reference"].shards == (2, 2, 3, 16, 16) and g["reference_valid"].shards == (2, 2, 16, 16)
    for k in range(3):  # whole-shard writes, the export's path
        write_shard(g["reference"], k, pixels[2 * k:2 * k + 2])
        write_shard(g["reference_valid"], k, valid[2 * k:2 * k + 2])
    g["reference_acquired"][:] = acquired
    g["reference_sensor"][:] = sensor
    g["reference_scene_id"][:] = ids
    again = open_store(tmp_path / "r.zarr")
    np.testing.assert_array_equal(again["reference"][:], pixels)
    np.testing.assert_array_equal(read_shard(again["reference_valid"], 1), valid[2:4])
    assert again["reference_acquired"][:].tolist() == acquired.tolist()
    assert again["reference_sensor"][:].tolist() == sensor.tolist()
    ds = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    assert ds["reference"].dims == ("patch", "reference", "band", "y", "x")
    assert ds["reference_valid"].dims == ("patch", "reference", "y", "x")
    assert ds["reference_sensor"].dims == ("patch", "reference") and ds.sizes["reference"] == 2
    np.testing.assert_array_equal(ds["reference"].values, pixels)
    np.testing.assert_array_equal(ds["reference_valid"].values, valid)
    assert ds["reference_acquired"].values.tolist() == acquired.tolist()
    grow_store(again := open_store(tmp_path / "r.zarr", "r+"), 7)
    assert again["reference"].shape == (7, 2, 3, 16, 16) and again["reference_sensor"].shape == (7, 2)
    assert not again["reference_valid"][5:].any() and again["reference_sensor"][6].tolist() == ["", ""]
    del again["reference_sensor"]
    with pytest.raises(StoreError, match="lacks array.*reference_sensor"):
        open_store(tmp_path / "r.zarr")


def test_store_without_references_is_unchanged(tmp_path):
    """R = 0 (the default) creates no reference array and no new attribute: stores stay as before."""
    g = create_store(tmp_path / "s.zarr", n_patches=3, bands=["r", "g", "b"], radiometry=Radiometry(),
                     source="t", export_config={})
    assert not [name for name in g.array_keys() if name.startswith("reference")]
    assert "references" not in g.attrs and read_meta(g).references == 0
    grow_store(g, 4)
    assert open_store(tmp_path / "s.zarr")["images"].shape[0] == 4
    with pytest.raises(StoreError, match="references must be a count"):
        create_store(tmp_path / "bad.zarr", n_patches=1, bands=["r", "g", "b"], radiometry=Radiometry(),
                     source="t", export_config={}, references=-1)

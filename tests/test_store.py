import numpy as np
import pytest

from pipeline.store import Radiometry, StoreError, create_store, grow_store, open_store, patch_indices


def test_fixture_store_is_real_and_complete(real_store):
    g = open_store(real_store)
    assert g["images"].shape[1:] == (3, 256, 256)
    imgs = g["images"][:]
    # real imagery: every patch has texture (no constant/empty tiles)
    assert all(imgs[i].std() > 3 for i in range(len(imgs)))
    assert set(g["split"][:]) == {"train", "test"}
    assert len(patch_indices(g, "train")) + len(patch_indices(g, "test")) == len(imgs)


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

"""InpaintingDataset over a prepared REAL store: items, augmentation, workers, errors."""
import numpy as np
import pytest
import torch
from prepare_helpers import small_prepare_config
from torch.utils.data import DataLoader

from pipeline.dataset import InpaintingDataset, apply_aug
from pipeline.edges import edges_for_batch
from pipeline.prepare import DaskConfig, prepare_store
from pipeline.store import StoreError, open_store


@pytest.fixture(scope="module")
def prepared(real_store_template, tmp_path_factory):
    import shutil

    path = tmp_path_factory.mktemp("ds") / "real.zarr"
    shutil.copytree(real_store_template, path)
    prepare_store(path, small_prepare_config(), DaskConfig(threads_per_worker=2))
    return path


def test_item_matches_store(prepared):
    ds = InpaintingDataset(prepared, "test", augment=False)
    g = open_store(prepared)
    pairs = g["pairings/test"][:]
    assert len(ds) == len(pairs)
    item = ds[5]
    idx, midx, _ = pairs[5]
    assert item["image"].shape == (3, 256, 256) and item["image"].dtype == torch.float32
    assert item["edges"].shape == item["mask"].shape == (1, 256, 256)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    np.testing.assert_allclose(item["image"].numpy() * 255, g["images"][idx], atol=1e-3)
    np.testing.assert_array_equal(item["edges"].numpy(), g["edges"][idx])
    np.testing.assert_array_equal(item["mask"][0].numpy(), g["masks"][midx])
    assert item["index"] == idx and item["mask_kind"] == g["masks_kind"][midx]
    assert item["hole_ratio"] == pytest.approx(float(item["mask"].mean()), abs=1e-6)


def test_augmentation_identical_on_image_edges_mask(prepared):
    plain = InpaintingDataset(prepared, "train", augment=False)
    aug = InpaintingDataset(prepared, "train", augment=True)
    rows = [i for i in range(len(aug)) if aug.pairings[i, 2] >= 4][:1] + \
           [i for i in range(len(aug)) if 0 < aug.pairings[i, 2] < 4][:1]
    assert rows
    for i in rows:
        a, p = aug[i], plain[i]
        code = int(aug.pairings[i, 2])
        assert a["aug"] == code
        for key in ("image", "edges", "mask"):
            np.testing.assert_array_equal(a[key].numpy(), apply_aug(p[key].numpy(), code))
        # the augmented edges are (nearly) the edges of the augmented image: Canny is dihedral-equivariant
        recomputed = edges_for_batch(a["image"].numpy()[None])[0]
        stored = a["edges"].numpy().astype(bool)
        recomputed = recomputed.astype(bool)
        assert 2 * (stored & recomputed).sum() / (stored.sum() + recomputed.sum()) > 0.95


def test_apply_aug_codes():
    x = np.arange(6).reshape(1, 2, 3)
    outs = {apply_aug(x, k).tobytes() + bytes(apply_aug(x, k).shape) for k in range(8)}
    assert len(outs) == 8  # the 8 codes are the 8 distinct dihedral transforms
    np.testing.assert_array_equal(apply_aug(x, 4), x[..., ::-1])
    with pytest.raises(ValueError, match="0..7"):
        apply_aug(x, 8)


def test_dataloader_with_workers(prepared):
    ds = InpaintingDataset(prepared, "train")
    ds[0]  # opens the group in the parent: it must not travel to the workers
    batches = list(DataLoader(ds, batch_size=4, num_workers=2, shuffle=False))
    assert sum(len(b["index"]) for b in batches) == len(ds)
    assert batches[0]["image"].shape == (4, 3, 256, 256)
    torch.testing.assert_close(batches[0]["image"][1], ds[1]["image"])


def test_errors(real_store, prepared):
    with pytest.raises(StoreError, match="lacks"):
        InpaintingDataset(real_store, "train")  # exported, not prepared
    with pytest.raises(StoreError, match="no pairings/validation"):
        InpaintingDataset(prepared, "validation")
    with pytest.raises(IndexError):
        InpaintingDataset(prepared, "test")[10_000]

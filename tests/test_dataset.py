"""Training samples and evaluation pairs over a prepared REAL store: the deployment edges, fresh
masks of the training split, determinism, augmentation, workers, errors."""
import numpy as np
import pytest
import torch
from prepare_helpers import small_prepare_config
from torch.utils.data import DataLoader

from models.data import collate, epoch_batches
from models.inference import TilingConfig, inpaint_array
from pipeline.dataset import EvalPairs, TrainingSamples, apply_aug
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


def _inference_edges(stored: np.ndarray, hole: np.ndarray, radiometry, edge_params) -> np.ndarray:
    """The known edges the inference engine hands to the model for this tile."""
    seen = []

    def capture(images01, mask, edges):
        seen.append(edges.copy())
        return images01

    tile = stored.shape[-1]
    inpaint_array(stored, hole, capture, radiometry.to_unit, edge_params=edge_params,
                  tiling=TilingConfig(tile=tile, overlap=min(32, tile // 2), batch_size=1))
    assert len(seen) == 1
    return seen[0][0]


@pytest.mark.parametrize("crop", [None, 128])
def test_training_known_edges_equal_the_inference_edges_bit_for_bit(prepared, crop):
    ds = TrainingSamples(prepared, crop_size=crop, seed=3)
    g = open_store(prepared)
    kinds_seen = set()
    for slot in range(60):
        item = ds[(0, slot, slot % len(ds))]
        kind = item["mask_kind"]
        if kind not in ("slc_off", "slc_off_real", "irregular") or kind in kinds_seen:
            continue
        kinds_seen.add(kind)
        d, _ = ds.draw(0, slot)
        c = crop or 256
        stored = apply_aug(g["images"][item["index"]][:, d["y"]:d["y"] + c, d["x"]:d["x"] + c], d["aug"])
        hole = item["mask"][0].numpy() > 0.5
        expected = _inference_edges(stored, hole, ds.radiometry, ds.edge_params)
        np.testing.assert_array_equal(item["known_edges"].numpy(), expected)
        # the target is the store's full-image edge map, which does see inside the hole
        np.testing.assert_array_equal(item["edges"].numpy(),
                                      apply_aug(g["edges"][item["index"]][:, d["y"]:d["y"] + c, d["x"]:d["x"] + c], d["aug"]))
        assert (item["known_edges"] * item["mask"]).sum() == 0
    assert kinds_seen == {"slc_off", "slc_off_real", "irregular"}


def test_known_edges_do_not_depend_on_what_the_hole_holds(prepared):
    ds = EvalPairs(prepared, "validation")
    stored, hole = ds.stored(3)
    noisy = stored.copy()
    noisy[:, hole] = np.random.default_rng(0).integers(0, 256, (3, int(hole.sum())), dtype=np.uint8)
    a = _inference_edges(stored, hole, ds.radiometry, ds.edge_params)
    b = _inference_edges(noisy, hole, ds.radiometry, ds.edge_params)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ds[3]["known_edges"].numpy(), a)


def test_eval_pairs_match_the_store_and_use_only_their_split_masks(prepared):
    g = open_store(prepared)
    split = g["masks_split"][:]
    for name in ("validation", "test"):
        ds = EvalPairs(prepared, name)
        pairs = g[f"pairings/{name}"][:]
        assert len(ds) == len(pairs) > 0
        assert set(split[pairs[:, 1]]) == {name}
        assert set(g["split"][:][pairs[:, 0]]) == {name}
        item = ds[5]
        idx, midx, _ = pairs[5]
        assert item["image"].shape == (3, 256, 256) and item["image"].dtype == torch.float32
        np.testing.assert_allclose(item["image"].numpy() * 255, g["images"][idx], atol=1e-3)
        np.testing.assert_array_equal(item["edges"].numpy(), g["edges"][idx])
        np.testing.assert_array_equal(item["mask"][0].numpy(), g["masks"][midx])
        assert item["index"] == idx and item["mask_kind"] == g["masks_kind"][midx]


def test_training_draws_fresh_train_masks_reproducibly(prepared):
    g = open_store(prepared)
    split = g["masks_split"][:]
    ds = TrainingSamples(prepared, crop_size=128, seed=0)
    keys = [k for e in range(6) for b in epoch_batches(len(ds), 2, e, seed=0) for k in b]
    items = [ds[k] for k in keys]
    assert {split[it["mask_index"]] for it in items} == {"train"}
    assert len({it["mask_index"] for it in items}) > len(items) * 0.6   # fresh masks, few repeats
    per_image = {}
    for it in items:
        per_image.setdefault(it["index"], set()).add(it["mask_index"])
    assert all(len(v) >= 4 for v in per_image.values())               # an image meets new masks each epoch
    assert all(0.01 <= it["hole_ratio"] <= 0.9 for it in items)
    again = TrainingSamples(prepared, crop_size=128, seed=0)
    for k in keys[:5]:  # the same key is the same sample (exact resume, any number of workers)
        a, b = ds[k], again[k]
        assert all(torch.equal(a[n], b[n]) for n in ("image", "edges", "known_edges", "mask"))
    other = TrainingSamples(prepared, crop_size=128, seed=1)
    assert not torch.equal(other[keys[0]]["mask"], ds[keys[0]]["mask"])


def test_augmentation_is_applied_to_image_and_target_edges_together(prepared):
    ds = TrainingSamples(prepared, crop_size=None, seed=5)
    plain = TrainingSamples(prepared, crop_size=None, seed=5, augment=False)
    g = open_store(prepared)
    for slot in range(40):
        d, _ = ds.draw(0, slot)
        if d["aug"] not in (0,):
            break
    item = ds[(0, slot, 0)]
    idx = item["index"]
    np.testing.assert_array_equal(item["edges"].numpy(), apply_aug(g["edges"][idx], d["aug"]))
    np.testing.assert_allclose(item["image"].numpy(), apply_aug(plain.radiometry.to_unit(g["images"][idx]), d["aug"]))
    # the augmented target edges are (nearly) the edges of the augmented image: Canny is dihedral-equivariant
    recomputed = edges_for_batch(item["image"].numpy()[None])[0].astype(bool)
    stored = item["edges"].numpy().astype(bool)
    assert 2 * (stored & recomputed).sum() / (stored.sum() + recomputed.sum()) > 0.95


def test_apply_aug_codes():
    x = np.arange(6).reshape(1, 2, 3)
    outs = {apply_aug(x, k).tobytes() + bytes(apply_aug(x, k).shape) for k in range(8)}
    assert len(outs) == 8  # the 8 codes are the 8 distinct dihedral transforms
    np.testing.assert_array_equal(apply_aug(x, 4), x[..., ::-1])
    with pytest.raises(ValueError, match="0..7"):
        apply_aug(x, 8)


def test_dataloader_with_workers_gives_the_same_samples(prepared):
    ds = TrainingSamples(prepared, crop_size=64)
    batches = epoch_batches(len(ds), 2, 0, seed=0)
    ds[batches[0][0]]  # opens the group in the parent: it must not travel to the workers
    loaded = list(DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=2))
    assert len(loaded) == len(batches) and loaded[0]["image"].shape == (2, 3, 64, 64)
    torch.testing.assert_close(loaded[0]["image"][1], ds[batches[0][1]]["image"])
    torch.testing.assert_close(loaded[-1]["known_edges"][0], ds[batches[-1][0]]["known_edges"])


def test_errors(real_store, prepared):
    with pytest.raises(StoreError, match="lacks"):
        TrainingSamples(real_store)  # exported, not prepared
    with pytest.raises(ValueError, match="training draws its own samples"):
        EvalPairs(prepared, "train")
    with pytest.raises(IndexError):
        EvalPairs(prepared, "test")[10_000]
    with pytest.raises(ValueError, match="multiple of 4"):
        TrainingSamples(prepared, crop_size=66)

"""Torch datasets over a prepared store: fresh training samples and the fixed evaluation pairs.

Item (all float32, channels first, S = sample size: the crop, or the patch size P):
  ``image`` (3, S, S) in [0, 1] (the store's radiometry, :meth:`Radiometry.to_unit`),
  ``edges`` (1, S, S) in {0, 1}: G1's TARGET, the store's Canny of the whole truth patch,
  ``known_edges`` (1, S, S) in {0, 1}: G1's INPUT, :func:`pipeline.edges.known_edges` of the
  masked sample (the very function inference applies to a masked tile),
  ``mask`` (1, S, S) in {0, 1} (1 = missing), plus ``index`` (image index in the store),
  ``mask_index``, ``mask_kind``, ``hole_ratio`` (fraction missing in this sample), ``aug``.

Augmentation code ``aug`` in 0..7: ``rot90`` by ``k = aug % 4`` quarter turns (counter-clockwise,
``np.rot90`` on the last two axes), then a horizontal flip (last axis reversed) if ``aug >= 4``.

- :class:`EvalPairs` (validation / test): the FIXED table ``pairings/<split>``, whole patches,
  no augmentation. Use it for every score and decision.
- :class:`TrainingSamples`: one item per (epoch, slot) key. Each key draws, from a generator
  seeded by ``(seed, epoch, slot)``, a TRAIN mask (kind by the store's ``kind_weights``, then
  uniform within the kind), an augmentation of the image, one of the mask (none for SLC-off
  kinds: real scan gaps keep their tilt), and random crop positions for the image and for the
  mask (redrawn while the crop holds under 1 % or over 90 % holes). So every sample sees a fresh
  mask, the draw is reproducible (exact resume) and independent of the number of loader workers.

Worker-safe: the Zarr group is opened lazily in each process (the handle is dropped when the
dataset is pickled into a DataLoader worker), so ``num_workers > 0`` works with fork or spawn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.edges import known_edges
from pipeline.pairings import EVAL_SPLITS, train_kind_pools
from pipeline.store import StoreError, open_store, patch_indices, read_meta

PREPARED_ARRAYS = ("images", "edges", "masks", "masks_kind", "masks_ratio", "masks_split")
#: Mask kinds whose orientation is physical (scan-gap tilt): never rotated or flipped.
ORIENTED_KINDS = ("slc_off", "slc_off_real")
MIN_SAMPLE_HOLES, MAX_SAMPLE_HOLES = 0.01, 0.9


def apply_aug(x: np.ndarray, aug: int) -> np.ndarray:
    """Apply augmentation code ``aug`` (0..7) to an array (..., H, W); see module docstring."""
    if not 0 <= int(aug) <= 7:
        raise ValueError(f"augmentation code must be 0..7, got {aug}")
    out = np.rot90(x, k=int(aug) % 4, axes=(-2, -1))
    if aug >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


class _StoreItems(Dataset):
    """Shared plumbing: lazy worker-safe group, radiometry, edge parameters, item assembly."""

    def __init__(self, store_path: str | Path) -> None:
        self.store_path = Path(store_path)
        group = open_store(self.store_path, "r", require=PREPARED_ARRAYS)
        self.mask_kind = np.asarray(group["masks_kind"][:])
        self.mask_split = np.asarray(group["masks_split"][:])
        meta = read_meta(group)
        self.radiometry = meta.radiometry
        self.edge_params = meta.prepare.edges()
        self.patch_size = meta.patch_size
        self._group = None
        self._arrays: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"], state["_arrays"] = None, {}  # never ship an open handle to another process
        return state

    @property
    def group(self):
        if self._group is None:
            self._group = open_store(self.store_path, "r", require=PREPARED_ARRAYS)
        return self._group

    def array(self, name: str):
        """The store array ``name``, opened once per process (reopening costs ~2 ms an item)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def _item(self, index: int, mask_index: int, image: np.ndarray, edges: np.ndarray, mask: np.ndarray,
              aug: int) -> dict[str, Any]:
        known = known_edges(image, mask > 0.5, self.edge_params)[None].astype(np.float32)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, np.float32)),
                "edges": torch.from_numpy(np.ascontiguousarray(edges, np.float32)),
                "known_edges": torch.from_numpy(known),
                "mask": torch.from_numpy(np.ascontiguousarray(mask[None], np.float32)),
                "index": index, "mask_index": mask_index, "mask_kind": str(self.mask_kind[mask_index]),
                "hole_ratio": float(mask.mean()), "aug": aug}


class EvalPairs(_StoreItems):
    """The fixed ``pairings/<split>`` table (validation or test): whole patches, no augmentation."""

    def __init__(self, store_path: str | Path, split: str = "validation") -> None:
        if split not in EVAL_SPLITS:
            raise ValueError(f"EvalPairs serves {EVAL_SPLITS}; training draws its own samples (TrainingSamples)")
        super().__init__(store_path)
        self.split = split
        key = f"pairings/{split}"
        group = open_store(self.store_path, "r", require=PREPARED_ARRAYS)
        if key not in group:
            raise StoreError(f"store {self.store_path} has no {key} (run `edgefill prepare` first)")
        self.pairings = np.asarray(group[key][:], dtype=np.int64)
        if self.pairings.ndim != 2 or self.pairings.shape[1] < 3:
            raise StoreError(f"{key} must be (K, 3+), got {self.pairings.shape}")
        self.mask_ratio = np.asarray(group["masks_ratio"][:], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.pairings)

    def stored(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``i`` as stored: (image (3, P, P) in the store's dtype, mask (P, P) bool)."""
        index, mask_index = (int(v) for v in self.pairings[i, :2])
        return np.asarray(self.array("images")[index]), np.asarray(self.array("masks")[mask_index]).astype(bool)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} pairings")
        index, mask_index = (int(v) for v in self.pairings[i, :2])
        image = self.radiometry.to_unit(self.array("images")[index])
        mask = self.array("masks")[mask_index].astype(np.float32)
        return self._item(index, mask_index, image, self.array("edges")[index], mask, 0)


class TrainingSamples(_StoreItems):
    """Fresh training samples: ``ds[(epoch, slot, image_position)]`` (see module docstring).

    ``crop_size`` px (multiple of 4, at most the patch size; None = whole patches). ``seed``
    seeds every draw. ``len(ds)`` = number of valid train patches (one epoch visits each once)."""

    def __init__(self, store_path: str | Path, crop_size: int | None = None, seed: int = 0,
                 augment: bool = True) -> None:
        super().__init__(store_path)
        group = open_store(self.store_path, "r", require=PREPARED_ARRAYS)
        self.images = patch_indices(group, "train")
        if crop_size is not None and (crop_size % 4 or not 4 <= crop_size <= self.patch_size):
            raise ValueError(f"crop_size {crop_size} must be a multiple of 4 and <= patch size {self.patch_size}")
        self.crop_size, self.seed, self.augment = crop_size, seed, augment
        self.pools, self.pool_p = train_kind_pools(self.mask_kind, self.mask_split,
                                                   read_meta(group).prepare.pairings().kind_weights)

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, epoch: int, slot: int) -> tuple[dict[str, int], np.ndarray]:
        """The random choices of sample (epoch, slot): mask, augmentations, crop offsets (px);
        returned with the chosen library mask (P, P)."""
        rng = np.random.default_rng([self.seed, int(epoch), int(slot)])
        pool = self.pools[int(rng.choice(len(self.pools), p=self.pool_p))]
        mask_index = int(pool[rng.integers(len(pool))])
        p, c = self.patch_size, self.crop_size or self.patch_size
        out = {"mask_index": mask_index, "aug": int(rng.integers(8)) if self.augment else 0,
               "mask_aug": 0 if (not self.augment or self.mask_kind[mask_index] in ORIENTED_KINDS) else int(rng.integers(8)),
               "y": int(rng.integers(0, p - c + 1)), "x": int(rng.integers(0, p - c + 1)), "mask_y": 0, "mask_x": 0}
        full = np.asarray(self.array("masks")[mask_index])
        if c < p:
            for _ in range(20):
                my, mx = (int(v) for v in rng.integers(0, p - c + 1, 2))
                if MIN_SAMPLE_HOLES <= full[my:my + c, mx:mx + c].mean() <= MAX_SAMPLE_HOLES:
                    break
            out.update(mask_y=my, mask_x=mx)
        return out, full

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        epoch, slot, position = (int(v) for v in key)
        if not 0 <= position < len(self):
            raise IndexError(f"image position {position} out of range for {len(self)} train patches")
        d, full_mask = self.draw(epoch, slot)
        index, c = int(self.images[position]), self.crop_size or self.patch_size
        image = self.radiometry.to_unit(self.array("images")[index, :, d["y"]:d["y"] + c, d["x"]:d["x"] + c])
        edges = self.array("edges")[index, :, d["y"]:d["y"] + c, d["x"]:d["x"] + c]
        mask = full_mask[d["mask_y"]:d["mask_y"] + c, d["mask_x"]:d["mask_x"] + c].astype(np.float32)
        image, edges = apply_aug(image, d["aug"]), apply_aug(edges, d["aug"])
        mask = apply_aug(mask, d["mask_aug"])
        return self._item(index, d["mask_index"], image, edges, mask, d["aug"])

"""Torch dataset over a prepared store: one item per pairing row (image, edges, mask).

Item (all float32, channels first, P = patch size):
  ``image`` (3, P, P) in [0, 1] (the store's radiometry, :meth:`Radiometry.to_unit`),
  ``edges`` (1, P, P) in {0, 1} (1 = edge), ``mask`` (1, P, P) in {0, 1} (1 = missing),
  ``index`` int (image index in the store), ``mask_index`` int, ``mask_kind`` str,
  ``hole_ratio`` float (fraction of missing pixels), ``aug`` int.

Augmentation ``aug`` in 0..7 (the pairing table's third column): ``rot90`` by ``k = aug % 4``
quarter turns (counter-clockwise, ``np.rot90`` on the last two axes), then a horizontal flip
(last axis reversed) if ``aug >= 4``; applied identically to image, edges and mask. With
``augment=False`` the column is ignored (identity) - evaluation scores un-rotated patches.

Worker-safe: the Zarr group is opened lazily in each process (the handle is dropped when the
dataset is pickled into a DataLoader worker), so ``num_workers > 0`` works with fork or spawn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.store import StoreError, open_store, store_radiometry

PREPARED_ARRAYS = ("images", "edges", "masks", "masks_kind", "masks_ratio")


def apply_aug(x: np.ndarray, aug: int) -> np.ndarray:
    """Apply augmentation code ``aug`` (0..7) to an array (..., H, W); see module docstring."""
    if not 0 <= int(aug) <= 7:
        raise ValueError(f"augmentation code must be 0..7, got {aug}")
    out = np.rot90(x, k=int(aug) % 4, axes=(-2, -1))
    if aug >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


class InpaintingDataset(Dataset):
    """Pairs of (store image, library mask) for ``split`` ("train" | "test")."""

    def __init__(self, store_path: str | Path, split: Literal["train", "test"] = "train",
                 augment: bool = True) -> None:
        self.store_path = Path(store_path)
        self.split = split
        self.augment = augment
        group = open_store(self.store_path, "r", require=PREPARED_ARRAYS)
        key = f"pairings/{split}"
        if key not in group:
            raise StoreError(f"store {self.store_path} has no {key} (run `edgefill prepare` first)")
        self.pairings = np.asarray(group[key][:], dtype=np.int64)
        if self.pairings.ndim != 2 or self.pairings.shape[1] < 3:
            raise StoreError(f"{key} must be (K, 3+), got {self.pairings.shape}")
        self.mask_kind = np.asarray(group["masks_kind"][:])
        self.mask_ratio = np.asarray(group["masks_ratio"][:], dtype=np.float32)
        self.radiometry = store_radiometry(group)
        self.patch_size = int(group.attrs["patch_size"])
        self._group = None

    def __len__(self) -> int:
        return len(self.pairings)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = None  # never ship an open handle to another process
        return state

    @property
    def group(self):
        if self._group is None:
            self._group = open_store(self.store_path, "r", require=PREPARED_ARRAYS)
        return self._group

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} pairings")
        index, mask_index, aug = (int(v) for v in self.pairings[i, :3])
        g = self.group
        image = self.radiometry.to_unit(g["images"][index])
        edges = g["edges"][index].astype(np.float32)
        mask = g["masks"][mask_index][None].astype(np.float32)
        if self.augment and aug:
            image, edges, mask = (apply_aug(a, aug) for a in (image, edges, mask))
        return {"image": torch.from_numpy(image), "edges": torch.from_numpy(edges),
                "mask": torch.from_numpy(mask), "index": index, "mask_index": mask_index,
                "mask_kind": str(self.mask_kind[mask_index]),
                "hole_ratio": float(self.mask_ratio[mask_index]), "aug": aug if self.augment else 0}

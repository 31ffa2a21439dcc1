"""Training data order and batches: deterministic, resumable, DDP-aware.

Epoch ``e`` visits the train pairings in the order ``default_rng(seed + e).permutation(K)``;
rank ``r`` of ``W`` takes every W-th entry starting at ``r`` and cuts it into batches of
``batch_size`` (wrapping around when a rank has fewer pairings than one batch). The data
position saved in checkpoints is ``(epoch, batch)``: the next batch to train on.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def epoch_batches(n_items: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches (lists of dataset indices) rank ``rank`` trains on in epoch ``epoch``."""
    if n_items <= 0:
        raise ValueError("the train split has no pairings: nothing to train on")
    order = np.random.default_rng(seed + epoch).permutation(n_items)[rank::world]
    if len(order) == 0:
        order = np.random.default_rng(seed + epoch).permutation(n_items)[:1]
    n_batches = max(1, len(order) // batch_size)
    order = np.resize(order, n_batches * batch_size)
    return [order[b * batch_size:(b + 1) * batch_size].tolist() for b in range(n_batches)]


def collate(items: list[dict]) -> dict[str, torch.Tensor | list]:
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def batch_iterator(dataset: Dataset, batches: list[list[int]], start: int, *, num_workers: int = 0,
                   pin_memory: bool = False) -> Iterator[dict]:
    """Yield collated batches ``batches[start:]`` (worker processes read Zarr in parallel)."""
    loader = DataLoader(dataset, batch_sampler=batches[start:], collate_fn=collate, num_workers=num_workers,
                        pin_memory=pin_memory, persistent_workers=False,
                        prefetch_factor=4 if num_workers > 0 else None)
    yield from loader


def random_crop(batch: dict, size: int | None, generator: torch.Generator) -> dict:
    """Crop image/edges/mask of every sample at its own random offset (``generator`` drawn)."""
    if size is None:
        return batch
    h, w = batch["image"].shape[-2:]
    if size > min(h, w) or size % 4:
        raise ValueError(f"crop_size {size} must be a multiple of 4 and <= patch size {min(h, w)}")
    n = batch["image"].shape[0]
    ys = torch.randint(0, h - size + 1, (n,), generator=generator).tolist()
    xs = torch.randint(0, w - size + 1, (n,), generator=generator).tolist()
    out = dict(batch)
    for key in ("image", "edges", "mask"):
        out[key] = torch.stack([batch[key][i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(zip(ys, xs))])
    return out

"""Training data order and batches: deterministic, resumable, equal on every DDP rank.

An epoch is ONE pass over the training images (not over masks or pairs): epoch ``e`` visits
the image positions in the order ``default_rng([seed, e]).permutation(N)``, padded by
wrapping around to a multiple of ``world * batch_size`` (DistributedSampler semantics: every
image at least once, every rank the same number of batches). Rank ``r`` takes slots
``r, r + W, r + 2W, ...`` of that order and cuts them into batches. A batch element is the key
``(epoch, slot, image position)`` of :class:`pipeline.dataset.TrainingSamples`, whose draws are
seeded by ``(seed, epoch, slot)``: the same key always gives the same sample. The data position
saved in checkpoints is ``(epoch, batch)``: the next batch to train on.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

Key = tuple[int, int, int]


def batches_per_epoch(n_items: int, batch_size: int, world: int = 1) -> int:
    """Batches each rank trains per epoch (the same on every rank)."""
    if n_items <= 0:
        raise ValueError("the train split has no images: nothing to train on")
    per = world * batch_size
    return -(-n_items // per)


def epoch_batches(n_items: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[list[Key]]:
    """The batches (lists of sample keys) rank ``rank`` of ``world`` trains on in ``epoch``."""
    n_batches = batches_per_epoch(n_items, batch_size, world)
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    order = np.resize(order, n_batches * batch_size * world)  # wrap: every image at least once
    slots = np.arange(rank, len(order), world)
    return [[(epoch, int(s), int(order[s])) for s in slots[b * batch_size:(b + 1) * batch_size]]
            for b in range(n_batches)]


def collate(items: list[dict]) -> dict[str, torch.Tensor | list]:
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def batch_iterator(dataset: Dataset, batches: list[list[Key]], start: int, *, num_workers: int = 0,
                   pin_memory: bool = False) -> Iterator[dict]:
    """Yield collated batches ``batches[start:]`` (worker processes read Zarr in parallel)."""
    loader = DataLoader(dataset, batch_sampler=batches[start:], collate_fn=collate, num_workers=num_workers,
                        pin_memory=pin_memory, persistent_workers=False,
                        prefetch_factor=4 if num_workers > 0 else None)
    yield from loader

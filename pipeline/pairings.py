"""Deterministic (image, mask, augmentation) tables per split.

Rows are int64 ``(image index, mask index, aug)``; ``aug`` in 0..7 means ``rot90`` by
``aug % 4`` quarter turns then a horizontal flip if ``aug >= 4`` (see pipeline/dataset.py).

* train: every valid train patch gets ``train_pairs_per_image`` rows; the mask kind of each row
  is drawn with the probabilities ``kind_weights`` (renormalised over the kinds present in the
  library), the mask uniformly within its kind, ``aug`` uniformly in 0..7.
* test: FIXED holes for evaluation: for every (kind, hole-ratio bin) holding masks,
  ``test_pairs_per_bin`` rows cycle through the valid test patches (a seeded permutation), each
  with a seeded mask from that bin, ``aug = 0``. ``require_bins`` lists kinds whose every
  evaluation bin must be covered; a missing one -> :class:`MaskError`.

Train and test share the mask library (the split is by image: scene / AOI); the test table
is fixed by the seed, so every evaluation scores the same holes on the same patches.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from pipeline.masks import RATIO_BINS, MaskError, ratio_bin


def _default_weights() -> dict[str, float]:
    return {"irregular": 0.3, "qd_imd": 0.05, "slc_off": 0.3, "slc_off_real": 0.1, "cloud": 0.15, "nodata": 0.1}


class PairingConfig(BaseModel):
    seed: int = 0
    kind_weights: dict[str, float] = Field(default_factory=_default_weights)
    train_pairs_per_image: int = Field(4, ge=1)
    test_pairs_per_bin: int = Field(8, ge=1)
    test_kinds: list[str] | None = Field(None, description="kinds scored at test time (None: all present)")
    require_bins: list[str] = Field(default_factory=lambda: ["irregular"],
                                    description="kinds that must cover every evaluation bin")
    bins: list[tuple[float, float]] = Field(default_factory=lambda: list(RATIO_BINS))


def build_train_pairings(images: np.ndarray, kinds: np.ndarray, config: PairingConfig) -> np.ndarray:
    """(K, 3) int64 train table for valid train ``images`` and library ``kinds`` (M,)."""
    images = np.asarray(images, np.int64)
    if len(images) == 0:
        return np.empty((0, 3), np.int64)
    present = [k for k in config.kind_weights if config.kind_weights[k] > 0 and (kinds == k).any()]
    if not present:
        raise MaskError(f"none of the weighted kinds {sorted(config.kind_weights)} is in the mask library "
                        f"(it holds {sorted(set(kinds.tolist()))})")
    w = np.array([config.kind_weights[k] for k in present], np.float64)
    rng = np.random.default_rng([config.seed, 1])
    img = np.repeat(images, config.train_pairs_per_image)
    kind_idx = rng.choice(len(present), size=len(img), p=w / w.sum())
    mask = np.empty(len(img), np.int64)
    for j, k in enumerate(present):
        rows = np.flatnonzero(kind_idx == j)
        pool = np.flatnonzero(kinds == k)
        mask[rows] = pool[rng.integers(0, len(pool), len(rows))]
    aug = rng.integers(0, 8, len(img))
    return np.stack([img, mask, aug], axis=1).astype(np.int64)


def build_test_pairings(images: np.ndarray, kinds: np.ndarray, ratios: np.ndarray, config: PairingConfig) -> np.ndarray:
    """(K, 3) int64 fixed test table covering every (kind, bin) that holds masks."""
    images = np.asarray(images, np.int64)
    if len(images) == 0:
        return np.empty((0, 3), np.int64)
    bins = ratio_bin(ratios, config.bins)
    test_kinds = config.test_kinds or sorted(set(kinds.tolist()))
    missing = [f"{k} {int(lo * 100)}-{int(hi * 100)}%" for k in config.require_bins if k in test_kinds
               for b, (lo, hi) in enumerate(config.bins) if not ((kinds == k) & (bins == b)).any()]
    unknown = [k for k in test_kinds if not (kinds == k).any()]
    if unknown or missing:
        raise MaskError(f"test pairings cannot be filled: kinds absent from the library {unknown}, "
                        f"empty required (kind, bin) cells {missing}")
    rng = np.random.default_rng([config.seed, 2])
    order = rng.permutation(images)
    rows, cursor = [], 0
    for k in test_kinds:
        for b in range(len(config.bins)):
            pool = np.flatnonzero((kinds == k) & (bins == b))
            if len(pool) == 0:
                continue
            n = config.test_pairs_per_bin
            img = order[(cursor + np.arange(n)) % len(order)]
            cursor += n
            rows.append(np.stack([img, pool[rng.integers(0, len(pool), n)], np.zeros(n, np.int64)], axis=1))
    if not rows:
        raise MaskError("no mask of the test kinds falls into any evaluation bin")
    return np.concatenate(rows).astype(np.int64)

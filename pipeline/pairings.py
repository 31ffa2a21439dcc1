"""Fixed (image, mask) tables for validation and test, and the mask mix training draws from.

Rows are int64 ``(image index, mask index, aug)``; ``aug`` is 0 in these tables (evaluation
scores un-rotated patches; ``aug`` codes are defined in :mod:`pipeline.dataset`).

* validation / test: FIXED holes. For every (kind, hole-ratio bin) holding masks of that split,
  ``eval_pairs_per_bin`` rows cycle through the split's valid patches (a seeded permutation),
  each with a seeded mask of that split and bin. ``require_bins`` lists kinds whose every bin
  must be covered; a missing one -> :class:`MaskError`. Validation drives every decision
  (stage switch, model selection, promotion); test is reported and never used for a decision.
* train: no table. Every training sample draws a fresh mask from the TRAIN masks when it is
  loaded (:class:`pipeline.dataset.TrainingSamples`): a kind with probability ``kind_weights``
  (renormalised over the kinds present), then a mask uniformly within that kind (the library
  spreads each kind evenly over its bins), a random augmentation and crop position.

Masks of validation/test never appear in training (the library is split, see
:mod:`pipeline.masks.library`); images are split by scene or AOI at export.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.masks import RATIO_BINS, MaskError, ratio_bin

EVAL_SPLITS = ("validation", "test")


def _default_weights() -> dict[str, float]:
    return {"irregular": 0.3, "qd_imd": 0.05, "slc_off": 0.3, "slc_off_real": 0.1, "cloud": 0.15, "nodata": 0.1}


class PairingConfig(BaseModel):
    """Evaluation tables and the training mask mix. Fractions are probabilities (renormalised)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    kind_weights: dict[str, float] = Field(default_factory=_default_weights,
                                           description="probability of each mask kind in a training sample")
    eval_pairs_per_bin: int = Field(8, ge=1, description="validation/test rows per (mask kind, hole-ratio bin)")
    eval_kinds: list[str] | None = Field(None, description="kinds scored in validation/test (None: all present)")
    require_bins: list[str] = Field(default_factory=lambda: ["irregular"],
                                    description="kinds that must cover every evaluation bin")
    bins: list[tuple[float, float]] = Field(default_factory=lambda: list(RATIO_BINS))


def train_kind_pools(kinds: np.ndarray, splits: np.ndarray, weights: dict[str, float]) -> tuple[list[np.ndarray], np.ndarray]:
    """(mask indices of each weighted kind present in the TRAIN masks, their probabilities)."""
    kinds, splits = np.asarray(kinds), np.asarray(splits)
    present = [k for k, w in weights.items() if w > 0 and ((kinds == k) & (splits == "train")).any()]
    if not present:
        raise MaskError(f"none of the weighted kinds {sorted(weights)} has training masks in the library "
                        f"(it holds {sorted(set(kinds[splits == 'train'].tolist()))})")
    pools = [np.flatnonzero((kinds == k) & (splits == "train")) for k in present]
    w = np.array([weights[k] for k in present], np.float64)
    return pools, w / w.sum()


def build_eval_pairings(images: np.ndarray, kinds: np.ndarray, ratios: np.ndarray, mask_splits: np.ndarray,
                        split: str, config: PairingConfig) -> np.ndarray:
    """(K, 3) int64 fixed table of ``split`` (validation or test): ``images`` = that split's valid
    patches, masks drawn from the library rows whose ``mask_splits`` equals ``split``."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"evaluation tables exist for {EVAL_SPLITS}, not {split!r}")
    images = np.asarray(images, np.int64)
    if len(images) == 0:
        return np.empty((0, 3), np.int64)
    kinds, mask_splits = np.asarray(kinds), np.asarray(mask_splits)
    mine = mask_splits == split
    bins = ratio_bin(ratios, config.bins)
    eval_kinds = config.eval_kinds or sorted(set(kinds[mine].tolist()))
    missing = [f"{k} {int(lo * 100)}-{int(hi * 100)}%" for k in config.require_bins if k in eval_kinds
               for b, (lo, hi) in enumerate(config.bins) if not ((kinds == k) & (bins == b) & mine).any()]
    unknown = [k for k in eval_kinds if not ((kinds == k) & mine).any()]
    if unknown or missing:
        raise MaskError(f"{split} pairings cannot be filled: kinds without {split} masks {unknown}, "
                        f"empty required (kind, bin) cells {missing}")
    rng = np.random.default_rng([config.seed, EVAL_SPLITS.index(split) + 2])
    order = rng.permutation(images)
    rows, cursor = [], 0
    for k in eval_kinds:
        for b in range(len(config.bins)):
            pool = np.flatnonzero((kinds == k) & (bins == b) & mine)
            if len(pool) == 0:
                continue
            n = config.eval_pairs_per_bin
            img = order[(cursor + np.arange(n)) % len(order)]
            cursor += n
            rows.append(np.stack([img, pool[rng.integers(0, len(pool), n)], np.zeros(n, np.int64)], axis=1))
    if not rows:
        raise MaskError(f"no {split} mask of the kinds {eval_kinds} falls into any evaluation bin")
    return np.concatenate(rows).astype(np.int64)

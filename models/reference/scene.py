"""The reference mode of scene inpainting: a batched ``fill_fn`` for the tiled engine
(:mod:`models.inference`) that fills each hole pixel from the nearest-date reference valid there,
and with the single-image model where no reference is.

The engine hands each batch its references as auxiliary channels, 4 per reference in date order
(nearest first): 3 bands in the target's model units and 1 validity channel (1 = valid).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from models.reference.adaptive import adaptive_fill
from models.reference.fills import local_regression, reference_harmonic, similar_pixels

ReferenceMethod = Literal["local_regression", "reference_harmonic", "similar_pixels", "adaptive"]
#: the default reference fill, chosen on the validation pairs (docs/DESIGN.md, bench/reference.py).
DEFAULT_REFERENCE_METHOD: ReferenceMethod = "local_regression"
CHANNELS_PER_REFERENCE = 4

ArrayFill = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
REFERENCE_METHODS: dict[str, ArrayFill] = {
    "local_regression": local_regression,
    "reference_harmonic": reference_harmonic,
    "similar_pixels": similar_pixels,
    "adaptive": lambda t, h, r, v: adaptive_fill(t, h, r, v)[0],
}
METHOD_DESCRIPTIONS = {
    "local_regression": "local linear regression of the target on the reference (31 px windows) plus its "
                        "residual carried in harmonically",
    "reference_harmonic": "reference + harmonic(target - reference)",
    "similar_pixels": "NSPI-style similar pixels: the reference value plus the mean change of pixels that "
                      "looked alike on the reference date (21 px windows sampled every 2 px)",
    "adaptive": "scene-adaptive combination of the classical fills, fitted on the target's known pixels under "
                "its own hole geometry shifted onto known ground, checked on held-out known pixels",
}


@dataclass
class ReferenceCounts:
    """Tile-pixel counts of one run (tiles overlap, so these weigh shares, not pixels)."""

    per_reference: list[int] = field(default_factory=list)
    single_image: int = 0


def reference_fill_fn(n_references: int, single_image: Callable[..., np.ndarray],
                      method: ReferenceMethod = DEFAULT_REFERENCE_METHOD,
                      counts: ReferenceCounts | None = None) -> Callable[..., np.ndarray]:
    """``fill(images01, mask, edges, aux)`` for the engine: per tile, each reference in date order
    fills the hole pixels still open where it is valid (by ``method``); the rest go through
    ``single_image(images01, mask, edges)`` (the single-image model), only for tiles that need it."""
    fill_array = REFERENCE_METHODS[method]
    counts = counts if counts is not None else ReferenceCounts()
    if not counts.per_reference:
        counts.per_reference = [0] * n_references

    def fill(images01: np.ndarray, mask: np.ndarray, edges: np.ndarray, aux: np.ndarray) -> np.ndarray:
        out = images01.copy()
        left = np.zeros(mask.shape, bool)[:, 0]
        for i in range(images01.shape[0]):
            hole = mask[i, 0] > 0.5
            todo = hole.copy()
            for k in range(n_references):
                ref = aux[i, CHANNELS_PER_REFERENCE * k:CHANNELS_PER_REFERENCE * k + 3]
                valid = aux[i, CHANNELS_PER_REFERENCE * k + 3] > 0.5
                if not (todo & valid).any():
                    continue
                pred = fill_array(images01[i], hole, ref, valid)
                take = todo & valid & np.isfinite(pred).all(axis=0)
                out[i][:, take] = pred[:, take]
                todo &= ~take
                counts.per_reference[k] += int(take.sum())
            left[i] = todo
        need = left.any(axis=(1, 2))
        if need.any():
            model = np.asarray(single_image(images01[need], mask[need], edges[need]), np.float32)
            for j, i in enumerate(np.flatnonzero(need)):
                out[i][:, left[i]] = model[j][:, left[i]]
            counts.single_image += int(left.sum())
        return np.clip(out, 0.0, 1.0)

    return fill

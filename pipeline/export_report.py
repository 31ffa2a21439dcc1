"""Quicklook mosaic of an export store (PNG beside the store, referenced by the Prefect artifact)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from pipeline.atomic_io import atomic_path
from pipeline.store import store_radiometry


def write_quicklook(group: zarr.Group, path: Path, max_tiles: int = 36, tile: int = 96) -> Path | None:
    """Grid of up to ``max_tiles`` valid patches (first ones in store order), each ``tile`` px."""
    valid = np.flatnonzero(group["valid"][:])[:max_tiles]
    if len(valid) == 0:
        return None
    radiometry = store_radiometry(group)
    cols = int(np.ceil(np.sqrt(len(valid))))
    rows = int(np.ceil(len(valid) / cols))
    canvas = np.zeros((rows * tile, cols * tile, 3), dtype=np.uint8)
    span = int(valid[-1]) + 1
    block = group["images"][:span] if span <= 4 * max_tiles else None  # one read of whole shards
    for n, i in enumerate(valid):
        raw = block[int(i)] if block is not None else group["images"][int(i)]
        unit = radiometry.to_unit(raw)  # (3, P, P) in [0, 1]
        lo, hi = np.percentile(unit, [1, 99])
        img = np.clip((unit - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8)).resize((tile, tile), Image.BILINEAR)
        r, c = divmod(n, cols)
        canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = np.asarray(rgb)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path

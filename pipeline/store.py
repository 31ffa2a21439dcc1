"""The patch store: one Zarr v3 group shared by every stage.

Layout (see docs/DESIGN.md):

=============  ======================  ========  =========================================
array          shape                   dtype     notes
=============  ======================  ========  =========================================
images         (N, 3, P, P)            uint8/16  band order = attrs["bands"] (B3,B2,B1)
transform      (N, 6)                  float64   GDAL/rasterio affine (a, b, c, d, e, f)
epsg           (N,)                    int32
scene_id       (N,)                    str
acquired       (N,)                    str       ISO date, "" if unknown
sensor         (N,)                    str       LE07 / LT05 / LC08
split          (N,)                    str       "train" / "validation" / "test"
valid          (N,)                    bool      False: candidate skipped (nodata, clouds)
export_done    (n_shards,)             uint8     1 once shard k of every array is written
=============  ======================  ========  =========================================

``images`` is sharded along N: a chunk is one patch and a shard is ``shard_patches`` patches,
so a writer that owns whole shards never races another writer. Every per-patch array uses the
same shard boundaries along N. The group attrs hold ``bands``, ``radiometry`` (how stored
values become float reflectance-like values in [0, 1], see :class:`Radiometry`), ``source``,
``export_config`` and its ``config_hash``, ``created`` and ``patch_size``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict

STORE_VERSION = 1
#: The store's splits: train (fitting), validation (every decision: stage switch, selection,
#: promotion), test (reported only, never used for a decision). By scene or AOI, never by patch.
SPLITS = ("train", "validation", "test")
PER_PATCH_ARRAYS = ("images", "transform", "epsg", "scene_id", "acquired", "sensor", "split", "valid")


class StoreError(ValueError):
    """A store is missing, malformed, or does not match what the caller expects."""


class Radiometry(BaseModel):
    """Linear conversion from stored values to model input: ``clip(v * scale + offset, 0, 1)``.

    ``dtype`` is the stored dtype. uint8 DN uses scale 1/255; Earth Engine TOA reflectance
    stored as uint16 x 10000 uses 1e-4; Collection 2 SR uses 2.75e-05 / -0.2.
    """

    model_config = ConfigDict(frozen=True)
    dtype: Literal["uint8", "uint16", "float32"] = "uint8"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    description: str = "8-bit DN"

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """Stored values -> float32 in [0, 1]."""
        out = values.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        return np.clip(out, 0.0, 1.0, out=out)

    @classmethod
    def stretch(cls, valid_values: np.ndarray, dtype: str) -> "Radiometry":
        """The per-scene stretch used when data come in another dtype than a model was trained on:
        valid-pixel percentiles 0.5 / 99.5 (all bands together) -> 1/255 and 1 (as the bundled
        Landsat 8 scenes are stretched to 8 bits)."""
        values = np.asarray(valid_values, np.float64).ravel()
        if values.size == 0:
            raise ValueError("no valid pixel to derive a radiometric stretch from")
        lo, hi = np.percentile(values, [0.5, 99.5])
        hi = max(float(hi), float(lo) + 1e-6)
        scale = (254.0 / 255.0) / (hi - lo)
        return cls(dtype=dtype, scale=scale, offset=1.0 / 255.0 - lo * scale,
                   description=f"per-scene stretch of {dtype}: p0.5={lo:g} -> 1/255, p99.5={hi:g} -> 1")

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """Float in [0, 1] -> stored dtype (rounded and clipped to the dtype's range)."""
        values = (unit.astype(np.float64) - self.offset) / self.scale
        if self.dtype == "float32":
            return values.astype(np.float32)
        info = np.iinfo(self.dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(self.dtype)


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able config (the store's data version)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def create_store(
    path: str | Path,
    *,
    n_patches: int,
    patch_size: int = 256,
    shard_patches: int = 64,
    bands: list[str],
    radiometry: Radiometry,
    source: str,
    export_config: dict[str, Any],
) -> zarr.Group:
    """Create an empty store with every per-patch array sized ``n_patches`` (grown later)."""
    if n_patches < 0:
        raise StoreError(f"n_patches must be >= 0, got {n_patches}")
    n_shards = -(-n_patches // shard_patches)
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    p, s, n = patch_size, shard_patches, n_patches
    group.create_array("images", shape=(n, 3, p, p), dtype=radiometry.dtype,
                       chunks=(1, 3, p, p), shards=(s, 3, p, p), fill_value=0)
    group.create_array("transform", shape=(n, 6), dtype="float64", chunks=(s, 6), fill_value=0.0)
    group.create_array("epsg", shape=(n,), dtype="int32", chunks=(s,), fill_value=0)
    for name in ("scene_id", "acquired", "sensor", "split"):
        group.create_array(name, shape=(n,), dtype=str, chunks=(s,), fill_value="")
    group.create_array("valid", shape=(n,), dtype="bool", chunks=(s,), fill_value=False)
    group.create_array("export_done", shape=(n_shards,), dtype="uint8", chunks=(1,), fill_value=0)
    group.attrs.update({
        "edgefill_store_version": STORE_VERSION,
        "patch_size": p,
        "shard_patches": s,
        "bands": list(bands),
        "radiometry": radiometry.model_dump(),
        "source": source,
        "export_config": export_config,
        "config_hash": config_hash(export_config),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return group


def open_store(path: str | Path, mode: Literal["r", "r+"] = "r", *,
               require: tuple[str, ...] = PER_PATCH_ARRAYS) -> zarr.Group:
    """Open an existing store, checking that it is one and holds the ``require``-d arrays."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist (run `edgefill export` first)")
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as exc:  # zarr raises several types for "not a group"
        raise StoreError(f"{path} is not a Zarr v3 group: {exc}") from exc
    if group.attrs.get("edgefill_store_version") != STORE_VERSION:
        raise StoreError(f"{path} is not an edgefill store (attrs lack edgefill_store_version={STORE_VERSION})")
    missing = [name for name in require if name not in group]
    if missing:
        raise StoreError(f"store {path} lacks array(s) {missing}")
    images = group["images"]
    if "images" in require and (images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]):
        raise StoreError(f"store {path}: images must be (N, 3, P, P), got {images.shape}")
    return group


def store_radiometry(group: zarr.Group) -> Radiometry:
    return Radiometry(**group.attrs["radiometry"])


def patch_indices(group: zarr.Group, split: str | None = None) -> np.ndarray:
    """Indices of valid, exported patches, optionally of one split ("train"/"test")."""
    valid = group["valid"][:]
    if split is not None:
        valid &= group["split"][:] == split
    return np.flatnonzero(valid)


def grow_store(group: zarr.Group, n_patches: int) -> None:
    """Resize every per-patch array (and the shard record) to ``n_patches`` (never shrinks)."""
    n_old = group["images"].shape[0]
    if n_patches <= n_old:
        return
    for name in PER_PATCH_ARRAYS:
        arr = group[name]
        arr.resize((n_patches, *arr.shape[1:]))
    s = group.attrs["shard_patches"]
    group["export_done"].resize((-(-n_patches // s),))

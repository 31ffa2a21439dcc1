"""The patch store: one Zarr v3 group shared by every stage, and its metadata (read and written here only).

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

Optional reference acquisitions (only when ``StoreMeta.references`` = R > 0; R = 0 creates none):

==================  ==================  ========  ====================================================
reference           (N, R, 3, P, P)     images'   other dates of the patch's footprint, nearest first
reference_valid     (N, R, P, P)        bool      **1 = VALID** reference pixel (not the mask polarity)
reference_acquired  (N, R)              str       ISO date, "" = empty slot
reference_sensor    (N, R)              str       LE07 / LT05 / LC08 / LC09, "" = empty slot
reference_scene_id  (N, R)              str       scene / image id of the reference, "" = empty slot
==================  ==================  ========  ====================================================

``images`` is sharded along N: a chunk is one patch and a shard is ``shard_patches`` patches,
so a writer that owns whole shards never races another writer. Every per-patch array uses the
same shard boundaries along N. Every array carries Zarr v3 ``dimension_names``
(:data:`DIMENSIONS`: ``patch``, ``band``, ``y``, ``x`` ...), so ``xarray.open_zarr(STORE)``
opens the store without edgefill; stores written before that lack them and still open here.

The group attributes are :class:`StoreMeta` (``bands``, ``radiometry`` - how stored values become
float reflectance-like values in [0, 1], see :class:`Radiometry` -, ``source``, ``export_config``
and its ``config_hash``, ``created``, ``patch_size``, the export's record and prepare's record
:class:`PrepareRecord`). They are read with :func:`read_meta` and written with
:func:`write_meta` / :func:`update_prepare`, never as raw ``attrs[...]`` elsewhere.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.edges import EdgeParams
from pipeline.pairings import PairingConfig

STORE_VERSION = 1
#: The store's splits: train (fitting), validation (every decision: stage switch, selection,
#: promotion), test (reported only, never used for a decision). By scene or AOI, never by patch.
SPLITS = ("train", "validation", "test")
PER_PATCH_ARRAYS = ("images", "transform", "epsg", "scene_id", "acquired", "sensor", "split", "valid")
#: Per-patch arrays of the optional reference acquisitions (present iff ``StoreMeta.references`` > 0).
REFERENCE_ARRAYS = ("reference", "reference_valid", "reference_acquired", "reference_sensor", "reference_scene_id")
#: Zarr v3 ``dimension_names`` of every store array (xarray's dimensions). Arrays that share a
#: name share its length: ``patch`` = N, ``shard`` = ceil(N / shard_patches), ``y``/``x`` = P.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "images": ("patch", "band", "y", "x"),
    "transform": ("patch", "affine"),
    **{name: ("patch",) for name in ("epsg", "scene_id", "acquired", "sensor", "split", "valid", "skip_reason")},
    "reference": ("patch", "reference", "band", "y", "x"),
    "reference_valid": ("patch", "reference", "y", "x"),
    **{name: ("patch", "reference") for name in ("reference_acquired", "reference_sensor", "reference_scene_id")},
    "export_plan": ("candidate",),
    "export_done": ("shard",),
    "edges": ("patch", "edge_band", "y", "x"),
    "edges_done": ("shard",),
    "masks": ("mask", "y", "x"),
    **{name: ("mask",) for name in ("masks_kind", "masks_ratio", "masks_split")},
    "pairings/validation": ("validation_pair", "pair_field"),
    "pairings/test": ("test_pair", "pair_field"),
}


class StoreError(ValueError):
    """A store is missing, malformed, or does not match what the caller expects."""


class Radiometry(BaseModel):
    """Linear conversion from stored values to model input: ``clip(v * scale + offset, 0, 1)``.

    ``dtype`` is the stored dtype. uint8 DN uses scale 1/255; Earth Engine TOA reflectance
    stored as uint16 x 10000 uses 1e-4; Collection 2 SR uses 2.75e-05 / -0.2.
    """

    model_config = ConfigDict(frozen=True)
    dtype: Literal["uint8", "uint16", "int16", "float32"] = "uint8"
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


class ExportRecord(BaseModel):
    """``attrs["export_summary"]``: whether the export finished and, once it has, what it did."""

    model_config = ConfigDict(extra="allow")
    complete: bool = False
    summary: dict[str, Any] | None = None  # pipeline.export.ExportSummary as a dict
    finished: str | None = None  # ISO 8601 UTC time the export finished
    content: dict[str, Any] | None = None  # the summary less run-specific fields: equal for equal stores


class PrepareRecord(BaseModel):
    """``attrs["prepare"]``: what prepare-dataset recorded (edge parameters, mask library hash,
    the whole PrepareConfig as a dict, its hash, the last run's summary, completeness)."""

    model_config = ConfigDict(extra="allow")
    edge_params: EdgeParams | None = None
    masks_hash: str | None = None
    config: dict[str, Any] | None = None
    config_hash: str | None = None
    last_run: dict[str, Any] | None = None
    complete: bool = False

    def edges(self) -> EdgeParams:
        """The edge parameters prepare used (defaults when it recorded none)."""
        return self.edge_params or EdgeParams()

    def pairings(self) -> PairingConfig:
        """The pairing config prepare used (defaults when it recorded none)."""
        cfg = (self.config or {}).get("pairings")
        return PairingConfig(**cfg) if cfg else PairingConfig()


class StoreMeta(BaseModel):
    """The store group's attributes. ``create_store`` writes the first block; the export adds
    ``n_candidates``, ``target``, ``scenes``, ``export_summary``, ``export_failures``; prepare
    adds ``prepare``. Unknown keys are kept (a newer writer's fields survive a rewrite)."""

    model_config = ConfigDict(extra="allow")
    edgefill_store_version: int
    patch_size: int = Field(gt=0, description="patch side, px")
    shard_patches: int = Field(gt=0, description="patches per shard along N")
    bands: list[str]
    radiometry: Radiometry
    source: str
    export_config: dict[str, Any]
    config_hash: str = Field(description="hash of export_config: the store's data version")
    created: str = Field(description="ISO 8601 UTC creation time")
    n_candidates: int | None = None
    target: int | None = None
    scenes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-scene facts (STAC items)")
    export_summary: ExportRecord = Field(default_factory=ExportRecord)
    export_failures: list[str] = Field(default_factory=list)
    prepare: PrepareRecord = Field(default_factory=PrepareRecord)
    references: int = Field(0, ge=0, description="R: reference acquisitions per patch (0 = no reference arrays)")


def _where(group: zarr.Group) -> str:
    return str(getattr(group.store, "root", group.store))


def _validate(group: zarr.Group, attrs: dict[str, Any]) -> StoreMeta:
    try:
        return StoreMeta.model_validate(attrs)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"]) or "attrs"
        raise StoreError(f"store {_where(group)}: bad metadata {field}: {err['msg']}") from None


def read_meta(group: zarr.Group) -> StoreMeta:
    """The store's attributes, validated (:class:`StoreError` naming the first bad field)."""
    return _validate(group, group.attrs.asdict())


def write_meta(group: zarr.Group, **fields: Any) -> StoreMeta:
    """Set ``fields`` (:class:`StoreMeta` field names) in the store's attributes, validated first;
    other attributes are left as they are. Returns the new metadata."""
    unknown = sorted(set(fields) - set(StoreMeta.model_fields))
    if unknown:
        raise StoreError(f"unknown store metadata field(s) {unknown}; known: {sorted(StoreMeta.model_fields)}")
    meta = _validate(group, {**group.attrs.asdict(), **fields})
    dumped = meta.model_dump(mode="json")
    group.attrs.update({name: dumped[name] for name in fields})
    return meta


def update_prepare(group: zarr.Group, **fields: Any) -> PrepareRecord:
    """Merge ``fields`` (:class:`PrepareRecord` field names) into ``attrs["prepare"]``."""
    record = PrepareRecord.model_validate({**read_meta(group).prepare.model_dump(), **fields})
    write_meta(group, prepare=record)
    return record


def dimension_names(name: str) -> tuple[str, ...]:
    """The Zarr ``dimension_names`` of store array ``name`` (see :data:`DIMENSIONS`)."""
    try:
        return DIMENSIONS[name]
    except KeyError:
        raise StoreError(f"no dimension names for store array {name!r}; known: {sorted(DIMENSIONS)}") from None


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
    references: int = 0,
) -> zarr.Group:
    """Create an empty store with every per-patch array sized ``n_patches`` (grown later).
    ``references`` = R > 0 adds the reference arrays (:data:`REFERENCE_ARRAYS`); 0 adds nothing."""
    if n_patches < 0:
        raise StoreError(f"n_patches must be >= 0, got {n_patches}")
    if not isinstance(references, int) or references < 0:
        raise StoreError(f"references must be a count >= 0, got {references!r}")
    n_shards = -(-n_patches // shard_patches)
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    p, s, n = patch_size, shard_patches, n_patches
    meta = StoreMeta(edgefill_store_version=STORE_VERSION, patch_size=p, shard_patches=s, bands=list(bands),
                     radiometry=radiometry, source=source, export_config=export_config,
                     config_hash=config_hash(export_config), references=references,
                     created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def array(name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], **kwargs: Any) -> None:
        group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, dimension_names=dimension_names(name), **kwargs)

    array("images", (n, 3, p, p), radiometry.dtype, (1, 3, p, p), shards=(s, 3, p, p), fill_value=0)
    array("transform", (n, 6), "float64", (s, 6), fill_value=0.0)
    array("epsg", (n,), "int32", (s,), fill_value=0)
    for name in ("scene_id", "acquired", "sensor", "split"):
        array(name, (n,), str, (s,), fill_value="")
    array("valid", (n,), "bool", (s,), fill_value=False)
    array("export_done", (n_shards,), "uint8", (1,), fill_value=0)
    if references:
        r = references
        array("reference", (n, r, 3, p, p), radiometry.dtype, (1, r, 3, p, p), shards=(s, r, 3, p, p), fill_value=0)
        array("reference_valid", (n, r, p, p), "bool", (1, r, p, p), shards=(s, r, p, p), fill_value=False)
        for name in ("reference_acquired", "reference_sensor", "reference_scene_id"):
            array(name, (n, r), str, (s, r), fill_value="")
    fields = set(meta.model_fields_set) - ({"references"} if not references else set())
    group.attrs.update(meta.model_dump(mode="json", include=fields))
    return group


def per_patch_arrays(group: zarr.Group) -> tuple[str, ...]:
    """The store's per-patch arrays written by the export: :data:`PER_PATCH_ARRAYS`, plus
    :data:`REFERENCE_ARRAYS` when the store records references."""
    return PER_PATCH_ARRAYS + (REFERENCE_ARRAYS if read_meta(group).references else ())


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
    refs = group.attrs.get("references", 0)
    if isinstance(refs, int) and refs > 0:
        missing += [name for name in REFERENCE_ARRAYS if name not in group]
    if missing:
        raise StoreError(f"store {path} lacks array(s) {missing}")
    images = group["images"]
    if "images" in require and (images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]):
        raise StoreError(f"store {path}: images must be (N, 3, P, P), got {images.shape}")
    return group


def store_radiometry(group: zarr.Group) -> Radiometry:
    """How the store's values become [0, 1] model input."""
    return read_meta(group).radiometry


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
    for name in per_patch_arrays(group):
        arr = group[name]
        arr.resize((n_patches, *arr.shape[1:]))
    s = read_meta(group).shard_patches
    group["export_done"].resize((-(-n_patches // s),))

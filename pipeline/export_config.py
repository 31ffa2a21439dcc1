"""Configuration of one export (pydantic, Raster Vision style) and its data-version hash.

Fields that change WHICH pixels land in the store enter :meth:`ExportConfig.data_config` (and
so the store's ``config_hash``); operational fields (output path, concurrency, credentials,
endpoint, retry policy) do not, so a rerun with more workers or another key still resumes.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.scenes import CATALOG_DIR

DEFAULT_AOI_DIR = CATALOG_DIR / "aois"
TOA_COLLECTION = "LANDSAT/LE07/C02/T1_TOA"
SR_COLLECTION = "LANDSAT/LE07/C02/T1_L2"
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
STANDARD_URL = "https://earthengine.googleapis.com"  # the earthengine-api client's default endpoint
SLC_FAILURE_DATE = "2003-05-31"
#: computePixels refuses a request whose pixels exceed 48 MiB ("Total request size (N bytes) must be less
#: than or equal to 50331648 bytes."); Earth Engine counts width x height x sum over bands of (itemsize + 1),
#: the + 1 being each band's mask byte.
EE_MAX_REQUEST_BYTES = 48 * 2**20
#: Bytes per pixel of each band as requested: B3/B2/B1 as uint16 (TOA scaled x 10^4 by Earth Engine, SR
#: as stored), QA_PIXEL uint16.
BAND_ITEMSIZE = {"toa": 2, "sr": 2, "QA_PIXEL": 2}


class ExportError(ValueError):
    """The export cannot run as configured (bad input, mismatching store, failed shards)."""


class ExportConfig(BaseModel):
    """Everything ``export_landsat`` needs. Units: pixels (size, stride), fractions in [0, 1].

    The one declaration of the export stage's parameters and defaults: ``edgefill export`` reads it
    from ``--config FILE.yaml``, ``--set key=value`` and flags generated from these fields, the
    ``export-landsat`` flow takes it as its ``config`` parameter."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["local", "earthengine"] = Field("local", description="local (bundled real scenes) or earthengine")
    out: Path = Field(Path("demo_out/landsat.zarr"), description="store to create or resume (STORE.zarr)")
    seed: int = Field(0, description="seeds the patch sampling")
    count: int | None = Field(None, description="target number of VALID patches; None = all (local) / 60000 (EE)")
    patch_size: int = 256
    shard_patches: int = Field(64, ge=1, le=4096, description="patches per Zarr shard, per task and per resume "
                               "unit (64 = one 8 x 8 Earth Engine block of ~48 MiB)")
    max_nodata: float = Field(0.01, ge=0.0, le=1.0, description="max fraction of missing pixels in a kept patch")
    # reference acquisitions (other dates of each patch's footprint, for reference-aware models)
    references: int = Field(0, ge=0, le=8, description="R: reference acquisitions stored per patch, nearest date "
                            "first (0 = none: the store has no reference arrays)")
    reference_window_days: int = Field(400, ge=1, description="a reference lies at most this many days from the "
                                       "target's acquisition (and on another date)")
    reference_min_valid: float = Field(0.8, ge=0.0, le=1.0, description="a reference is taken only if at least this "
                                       "fraction of the patch is valid in it (clear by QA, no fill, in its footprint)")
    # local source
    dataset: str | None = Field(None, description="data_catalog/datasets/<name>.json entry overriding scenes/splits")
    scenes: list[str] | None = None
    splits: dict[str, str] | None = Field(None, description="scene id or group -> train/validation/test "
                                          "(default: the scene's catalog role)")
    stride: int = Field(256, ge=1, description="local: px between patch starts")
    include_holdout: bool = Field(False, description="local: also export holdout scenes (Everest) into test")
    # earth engine source
    project: str | None = Field(None, description="Earth Engine Cloud project")
    key: Path | None = Field(None, description="service-account JSON key (else $EDGEFILL_EE_KEY / $GOOGLE_APPLICATION_CREDENTIALS)")
    api_url: str | None = Field(None, description="Earth Engine endpoint; None = the standard one (or the "
                                "high-volume one with high_volume)")
    high_volume: bool = Field(False, description="use the Earth Engine high-volume endpoint")
    product: Literal["toa", "sr"] = Field("toa", description="toa (Collection 2 TOA) or sr (Collection 2 L2 SR)")
    aois: list[Path] | None = Field(None, description="GeoJSON AOI files (default: data_catalog/aois/*.geojson)")
    start: str = Field("1999-06-01", description="date window start (YYYY-MM-DD)")
    end: str = Field("2003-05-30", description="date window end, exclusive (SLC-on by default)")
    max_scene_cloud_cover: float = Field(30.0, ge=0.0, le=100.0, description="CLOUD_COVER (%) scene filter")
    max_cloud_fraction: float = Field(0.02, ge=0.0, le=1.0, description="QA_PIXEL cloud/shadow fraction allowed per patch")
    test_fraction: float = Field(1 / 6, ge=0.0, le=1.0, description="share of AOIs without a 'split' property sent to test")
    validation_fraction: float = Field(1 / 6, ge=0.0, le=1.0, description="share of AOIs without a 'split' property sent to validation")
    concurrency: int = Field(32, ge=1, le=40, description="concurrent computePixels requests (GEE allows 40)")
    max_requests_per_s: float = Field(90.0, gt=0.0, le=100.0, description="request rate cap (GEE: 100/s per project)")
    block_patches: tuple[int, int] | None = Field(
        None, description="(rows, cols) of adjacent patches fetched by one computePixels request; None = the largest "
        "block whose patch count divides shard_patches and whose request stays under 48 MiB; (1, 1) = one patch per "
        "request (sparse sampling)")
    file_format: Literal["NUMPY_NDARRAY", "GEO_TIFF"] = Field("NUMPY_NDARRAY", description="computePixels response "
                                                             "format (the same pixels either way)")
    max_attempts: int = Field(6, ge=1)
    backoff_s: float = Field(0.5, ge=0.0, description="first retry delay; doubles each attempt, with jitter")
    timeout_s: float = Field(60.0, gt=0.0)

    @field_validator("count")
    @classmethod
    def _positive_count(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"count must be a positive number of patches, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ExportConfig":
        if self.start >= self.end:
            raise ValueError(f"date window is empty: start {self.start} >= end {self.end}")
        if self.block_patches is not None:
            rows, cols = self.block_patches
            if rows < 1 or cols < 1:
                raise ValueError(f"block_patches must be two positive patch counts (rows, cols), got {self.block_patches}")
            size = self.request_bytes(rows * self.patch_size, cols * self.patch_size)
            if size > EE_MAX_REQUEST_BYTES:
                raise ValueError(f"block_patches {self.block_patches} asks {size} bytes per computePixels request, over "
                                 f"Earth Engine's {EE_MAX_REQUEST_BYTES}-byte limit; choose a smaller block")
        if self.source == "earthengine" and self.end > SLC_FAILURE_DATE:
            warnings.warn(f"date window ends {self.end}, after the Landsat 7 SLC failure ({SLC_FAILURE_DATE}): "
                          "scenes will have stripes, unfit as complete training targets", stacklevel=2)
        return self

    @property
    def target(self) -> int | None:
        if self.count is not None:
            return self.count
        return 60000 if self.source == "earthengine" else None

    def aoi_files(self) -> list[Path]:
        if self.aois is not None:
            return [Path(p) for p in self.aois]
        return sorted(DEFAULT_AOI_DIR.glob("*.geojson"))

    @property
    def collection(self) -> str:
        return TOA_COLLECTION if self.product == "toa" else SR_COLLECTION

    @property
    def band_ids(self) -> list[str]:
        return ["B3", "B2", "B1"] if self.product == "toa" else ["SR_B3", "SR_B2", "SR_B1"]

    def request_bytes(self, height_px: int, width_px: int) -> int:
        """Bytes Earth Engine counts for one computePixels request of ``height_px`` x ``width_px`` pixels of
        the export's bands plus QA_PIXEL (each band: itemsize + 1 mask byte per pixel)."""
        per_pixel = 3 * (BAND_ITEMSIZE[self.product] + 1) + BAND_ITEMSIZE["QA_PIXEL"] + 1
        return height_px * width_px * per_pixel

    @property
    def block_shape(self) -> tuple[int, int]:
        """(rows, cols) of patches per request: ``block_patches``, else the largest rows x cols dividing
        ``shard_patches`` (so shards hold whole blocks) that fits the request limit, squarest first."""
        if self.block_patches is not None:
            return tuple(self.block_patches)
        shapes = [(n // c, c) for n in range(self.shard_patches, 0, -1) if self.shard_patches % n == 0
                  for c in range(int(n ** 0.5), 0, -1) if n % c == 0]
        return next(s for s in shapes
                    if self.request_bytes(s[0] * self.patch_size, s[1] * self.patch_size) <= EE_MAX_REQUEST_BYTES)

    def data_config(self) -> dict[str, Any]:
        """The fields that define the store's content (hashed into ``config_hash``)."""
        common = {"source": self.source, "seed": self.seed, "count": self.target,
                  "patch_size": self.patch_size, "shard_patches": self.shard_patches,
                  "max_nodata": self.max_nodata}
        if self.references:  # absent when 0: stores without references keep their hash
            common.update(references=self.references, reference_window_days=self.reference_window_days,
                          reference_min_valid=self.reference_min_valid)
        if self.source == "local":
            return {**common, "dataset": self.dataset, "scenes": self.scenes, "splits": self.splits,
                    "stride": self.stride, "include_holdout": self.include_holdout}
        aois = {}
        for path in self.aoi_files():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"
            aois[path.name] = digest
        return {**common, "collection": self.collection, "bands": self.band_ids, "aois": aois,
                "start": self.start, "end": self.end, "max_scene_cloud_cover": self.max_scene_cloud_cover,
                "max_cloud_fraction": self.max_cloud_fraction, "test_fraction": self.test_fraction,
                "validation_fraction": self.validation_fraction, "block": list(self.block_shape)}


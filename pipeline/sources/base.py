"""One interface for every patch source (bundled GeoTIFFs, Earth Engine).

A :class:`PatchRequest` names one 256 x 256 (``size``) pixel grid: an asset (bundled scene id or
Earth Engine image id), its CRS (``epsg``) and the GDAL/rasterio affine ``transform``
``(a, b, c, d, e, f)`` of the patch's upper-left pixel corner (metres, UTM). A source answers
with a :class:`Patch`: ``pixels`` (3, size, size) in the source's stored dtype plus the same
georeferencing and metadata, or a ``skip`` reason (``"nodata"``, ``"clouds"``) when the patch
must not become training data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.store import Radiometry

SKIP_REASONS = ("nodata", "clouds")


class SourceError(RuntimeError):
    """A source could not deliver (bad credentials, unreachable endpoint, retries exhausted)."""


class PatchRequest(BaseModel):
    """One patch to fetch. ``stratum`` is the AOI or scene it was sampled from."""

    model_config = ConfigDict(frozen=True)
    asset: str
    scene_id: str
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    size: int = 256
    acquired: str = ""
    sensor: str = ""
    split: str = "train"
    stratum: str = ""


@dataclass
class Patch:
    """A fetched patch. ``pixels`` is None exactly when ``skip`` names a reason."""

    request: PatchRequest
    pixels: np.ndarray | None
    skip: str | None = None
    missing_fraction: float = 0.0

    @property
    def transform(self) -> tuple[float, ...]:
        return self.request.transform

    @property
    def epsg(self) -> int:
        return self.request.epsg


class PatchSource(Protocol):
    """What the exporter needs from a source."""

    name: str
    bands: list[str]
    radiometry: Radiometry
    config: Any  # the ExportConfig it was built from

    def strata(self) -> list[list[PatchRequest]]:
        """Candidate requests grouped by stratum (AOI or scene), each shuffled from the seed."""

    def scene_metadata(self) -> dict[str, dict]:
        """Per-scene facts recorded in the store attrs / STAC items (may be empty)."""

    def fetch(self, request: PatchRequest) -> Patch:
        """Fetch one patch (raises :class:`SourceError` once retries are exhausted)."""

    def fetch_many(self, requests: list[PatchRequest]) -> list[Patch]:
        """Fetch several patches (concurrently where the source allows), in request order."""

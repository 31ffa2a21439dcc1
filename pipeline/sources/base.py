"""One interface for every patch source (bundled GeoTIFFs, Earth Engine).

A :class:`PatchRequest` names one 256 x 256 (``size``) pixel grid: an asset (bundled scene id or
Earth Engine image id), its CRS (``epsg``) and the GDAL/rasterio affine ``transform``
``(a, b, c, d, e, f)`` of the patch's upper-left pixel corner (metres, UTM). A source answers
with a :class:`Patch`: ``pixels`` (3, size, size) in the source's stored dtype plus the same
georeferencing and metadata, or a ``skip`` reason when the patch must not become training data:
``"nodata"``, ``"clouds"``, or ``"outside"`` (a cell of a block that lies outside the AOI or the
scene footprint: planned so that blocks keep whole shards, never fetched).

Requests are planned in blocks: the requests of one block (same ``asset`` and non-empty ``block``
key) are adjacent cells of one grid that the source may fetch with a single request; a request
with ``block == ""`` is fetched alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.store import Radiometry


class SourceError(RuntimeError):
    """A source could not deliver (bad credentials, unreachable endpoint, retries exhausted)."""


class ReferenceCandidate(BaseModel):
    """A planned reference acquisition of a request's footprint (Earth Engine: an image of any Landsat
    collection); the source decides at fetch time whether it is clear enough over the patch."""

    model_config = ConfigDict(frozen=True)
    asset: str
    acquired: str
    sensor: str


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
    block: str = ""
    outside: bool = False
    references: tuple[ReferenceCandidate, ...] = ()  # planned reference candidates, nearest date first

    @property
    def group(self) -> tuple[str, int, str] | None:
        """Key of the requests fetched together with this one (None: fetched alone)."""
        return (self.asset, self.epsg, self.block) if self.block else None


@dataclass
class Reference:
    """One reference acquisition of a patch's footprint: ``pixels`` (3, size, size) in the store's dtype and band
    order, ``valid`` (size, size) bool (**True = valid** reference pixel), its date, sensor and scene / image id."""

    pixels: np.ndarray
    valid: np.ndarray
    acquired: str
    sensor: str
    scene_id: str


@dataclass
class Patch:
    """A fetched patch. ``pixels`` is None exactly when ``skip`` names a reason. ``references``: up to R
    reference acquisitions, nearest date first (empty unless the export asks for references)."""

    request: PatchRequest
    pixels: np.ndarray | None
    skip: str | None = None
    missing_fraction: float = 0.0
    references: list[Reference] = field(default_factory=list)

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

    def strata(self) -> list[list[list[PatchRequest]]]:
        """Candidate blocks (lists of requests fetched together) grouped by stratum (AOI or scene),
        each stratum's blocks in an order shuffled from the seed."""

    def scene_metadata(self) -> dict[str, dict]:
        """Per-scene facts recorded in the store attrs / STAC items (may be empty)."""

    def fetch(self, request: PatchRequest) -> Patch:
        """Fetch one patch (raises :class:`SourceError` once retries are exhausted)."""

    def fetch_many(self, requests: list[PatchRequest]) -> list[Patch]:
        """Fetch several patches (concurrently where the source allows; one request per block where it
        fetches blocks), in request order."""

"""The bundled real Landsat scenes (``data_catalog/scenes.json``): catalog and reading.

A scene is read as an RGB stack in the store's band order (red, green, blue = B3,B2,B1 for
Landsat 5/7, B4,B3,B2 for Landsat 8) with a validity mask (True = valid, i.e. NOT missing)
and its georeferencing. Landsat 8 uint16 DN are stretched per scene to uint8 (percentiles
0.5 / 99.5 of valid pixels -> 1..255) so that they mix with the 8-bit Landsat 5/7 scenes; the
stretch is returned in the metadata so the conversion is recorded.

Chips without georeferencing (``georeferenced: false``, e.g. the FuseBox Landsat 7 crops) are
read on their own pixel grid: ``transform`` is the identity (units: pixels of the file) and
``epsg`` 0 (no CRS). Nothing is invented: what is known of their place (path/row, date, pixel
offset in the source scene) stays in the catalog's ``source_position``.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from affine import Affine

from pydantic import BaseModel, Field
from rasterio.errors import NotGeoreferencedWarning

from pipeline.qa import QAKind

CATALOG_DIR = Path(__file__).resolve().parent.parent / "data_catalog"
SceneRole = Literal["train", "validation", "test", "holdout", "slc_off", "slc_off_mask"]
#: Roles whose scenes are exported as patches, and the store split each lands in by default
#: (``holdout`` scenes, e.g. Everest, are exported only on request and are then scored as test).
ROLE_SPLIT: dict[str, str] = {"train": "train", "validation": "validation", "test": "test", "holdout": "test"}


class SceneEntry(BaseModel):
    """One bundled scene as declared in ``data_catalog/scenes.json`` (paths relative to it)."""

    id: str
    group: str | None = Field(None, description="the Landsat scene / place this raster belongs to (split unit); default: id")
    sensor: str
    acquired: str = ""
    role: SceneRole
    files: list[str]
    bands: list[int]
    nodata: float | None = None
    band_names: list[str]
    stretch: Literal["percentile"] | None = None
    qa: str | None = None
    qa_kind: QAKind | None = None
    gap_mask: str | None = None
    georeferenced: bool = Field(True, description="False: the file has no CRS/transform (chips); never invented")
    source_position: dict | None = Field(None, description="what is known of a chip's place in its scene (path/row, offsets)")
    license: str
    attribution: str

    @property
    def split_group(self) -> str:
        return self.group or self.id

    def path(self, rel: str) -> Path:
        return CATALOG_DIR / rel

    def band_files(self) -> list[tuple[Path, int]]:
        """(file, 1-based band) of each RGB plane: one file per band, or one multi-band file."""
        files = self.files if len(self.files) == len(self.bands) else self.files * len(self.bands)
        return [(self.path(rel), band) for rel, band in zip(files, self.bands)]


@dataclass
class SceneArray:
    """A scene in memory: ``rgb`` (3, H, W) uint8, ``valid`` (H, W) bool (True = has data)."""

    entry: SceneEntry
    rgb: np.ndarray
    valid: np.ndarray
    transform: Affine
    epsg: int
    stretch: list[list[float]] | None = field(default=None)


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, SceneEntry]:
    raw = json.loads((CATALOG_DIR / "scenes.json").read_text())
    return {s["id"]: SceneEntry(**s) for s in raw["scenes"]}


def scenes_with_role(*roles: SceneRole) -> list[SceneEntry]:
    return [s for s in load_catalog().values() if s.role in roles]


def get_scene(scene_id: str) -> SceneEntry:
    catalog = load_catalog()
    if scene_id not in catalog:
        raise KeyError(f"unknown scene {scene_id!r}; bundled scenes: {sorted(catalog)}")
    return catalog[scene_id]


def _percentile_stretch(band: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, list[float]]:
    lo, hi = np.percentile(band[valid], [0.5, 99.5]) if valid.any() else (0.0, 1.0)
    hi = max(hi, lo + 1.0)
    scaled = 1.0 + (band.astype(np.float64) - lo) * (254.0 / (hi - lo))
    return np.clip(np.rint(scaled), 1, 255).astype(np.uint8), [float(lo), float(hi)]


def read_scene(entry: SceneEntry | str) -> SceneArray:
    """Read a bundled scene (all of it: the bundled scenes are at most ~1.5k px a side)."""
    if isinstance(entry, str):
        entry = get_scene(entry)
    if entry.role == "slc_off_mask":
        raise ValueError(f"scene {entry.id} is shipped for its real SLC-off gap mask only "
                         f"(single int16 band); read entry.gap_mask instead")
    planes, transform, epsg = [], None, None
    for path, band in entry.band_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # chips: no CRS, by design
            with rasterio.open(path) as src:
                planes.append(src.read(band))
                if transform is None:
                    transform, epsg = src.transform, src.crs.to_epsg() if src.crs else None
    if not entry.georeferenced:  # pixel grid of the file itself; no CRS (epsg 0)
        transform, epsg = Affine.identity(), 0
    stack = np.stack(planes)
    valid = np.ones(stack.shape[1:], dtype=bool)
    if entry.nodata is not None:
        valid &= ~np.any(stack == entry.nodata, axis=0)
    if entry.sensor in ("LE07", "LT05"):
        valid &= ~np.any(stack == 0, axis=0)  # L1 DN 0 is fill
    stretch = None
    if entry.stretch == "percentile":
        out = []
        stretch = []
        for plane in stack:
            scaled, lohi = _percentile_stretch(plane, valid)
            out.append(np.where(valid, scaled, 0).astype(np.uint8))
            stretch.append(lohi)
        rgb = np.stack(out)
    else:
        rgb = np.where(valid, stack, 0).astype(np.uint8)
    if len(rgb) == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    return SceneArray(entry=entry, rgb=rgb, valid=valid, transform=transform, epsg=int(epsg or 0), stretch=stretch)

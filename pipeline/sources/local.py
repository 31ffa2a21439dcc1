"""The embedded default source: real bundled Landsat GeoTIFFs tiled at native resolution.

Scenes come from ``pipeline.scenes`` (``data_catalog/scenes.json``). By default the roles
``train``, ``validation`` and ``test`` are exported, each scene into its role's split; the
Everest holdout only with ``include_holdout`` (into test), the SLC-off scenes never. Chips
without georeferencing get epsg 0 and a transform in their own pixel units (see
:mod:`pipeline.scenes`). Pixels are uint8 (Radiometry scale 1/255); Landsat 8 scenes are
percentile-stretched by ``read_scene`` and that stretch is reported by :meth:`scene_metadata`.

References (``config.references`` = R > 0): for each kept patch, the R bundled scenes nearest in date
(``0 < |days| <= reference_window_days``) that lie on the SAME pixel grid (same CRS and pixel size,
whole-pixel offset: the footprint's pixels are read as they are, never resampled), belong to the same
split as the patch (no reference crosses train / validation / test) and hold at least
``reference_min_valid`` of the patch as valid pixels; their window is cut at the patch's place
(outside their extent: invalid). Bundled pairs of this kind: Taizhou 2000 / 2003, Nanjing 2000 / 2002.
Scenes known only by year, chips without georeferencing and SLC-off scenes are never references.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from pipeline.export_config import ExportConfig, ExportError
from pipeline.scenes import CATALOG_DIR, ROLE_SPLIT, SceneArray, SceneEntry, load_catalog, read_scene, scenes_with_role
from pipeline.sources.base import Patch, PatchRequest, Reference
from pipeline.store import SPLITS, Radiometry

DATASET_DIR = CATALOG_DIR / "datasets"


@lru_cache(maxsize=16)
def _scene(scene_id: str) -> SceneArray:
    return read_scene(scene_id)


def load_dataset_entry(name: str) -> dict:
    """A declarative dataset entry ``data_catalog/datasets/<name>.json``."""
    path = DATASET_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in DATASET_DIR.glob("*.json"))
        raise ExportError(f"unknown dataset {name!r}: {path} does not exist (known: {known})")
    return json.loads(path.read_text())


def iso_date(text: str) -> dt.date | None:
    """``YYYY-MM-DD`` (or a longer ISO time) as a date; None for a year alone or nothing."""
    try:
        return dt.date.fromisoformat(text[:10]) if len(text) >= 10 else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _Grid:
    """A bundled scene's pixel grid, read from its first file's header (no pixels)."""

    entry: SceneEntry
    date: dt.date
    epsg: int
    transform: Affine
    height: int
    width: int


@lru_cache(maxsize=256)
def _grid_of(scene_id: str) -> _Grid | None:
    entry = load_catalog()[scene_id]
    date = iso_date(entry.acquired)
    if date is None or not entry.georeferenced or not entry.files:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(entry.band_files()[0][0]) as src:
            if src.crs is None or not src.crs.to_epsg():
                return None
            return _Grid(entry, date, int(src.crs.to_epsg()), src.transform, src.height, src.width)


def grid_starts(length: int, size: int, stride: int) -> list[int]:
    """Patch starts every ``stride`` px plus one aligned to the end, so the whole extent is
    covered (a 400 px chip gives 0 and 144 for 256 px patches). Empty when ``length < size``."""
    if length < size:
        return []
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


class LocalSceneSource:
    """Tiles bundled scenes into ``patch_size`` patches every ``stride`` pixels."""

    name = "local"
    bands = ["red", "green", "blue"]
    radiometry = Radiometry(dtype="uint8", scale=1.0 / 255.0, offset=0.0,
                            description="8-bit DN (Landsat 8: per-scene percentile stretch to 1..255)")

    def __init__(self, config: ExportConfig):
        self.config = config
        entry = load_dataset_entry(config.dataset) if config.dataset else {}
        self.scene_ids = config.scenes or entry.get("scenes")
        self.splits = {**entry.get("splits", {}), **(config.splits or {})}

    def scenes(self) -> list[SceneEntry]:
        """Scenes to export, in catalog order."""
        if self.scene_ids:
            catalog = load_catalog()
            unknown = [s for s in self.scene_ids if s not in catalog]
            if unknown:
                raise ExportError(f"unknown scene id(s) {unknown}; bundled scenes: {sorted(catalog)}")
            chosen = [catalog[s] for s in self.scene_ids]
        else:
            roles = ("train", "validation", "test") + (("holdout",) if self.config.include_holdout else ())
            chosen = scenes_with_role(*roles)
        bad = [s.id for s in chosen if s.role in ("slc_off", "slc_off_mask")]
        if bad:
            raise ExportError(f"scene(s) {bad} are SLC-off (striped): not exportable as training targets")
        if not chosen:
            raise ExportError("no scenes selected for the local export")
        return chosen

    def split_of(self, entry: SceneEntry) -> str:
        """``splits[scene id]``, else ``splits[scene group]``, else the catalog role's split."""
        split = self.splits.get(entry.id, self.splits.get(entry.split_group, ROLE_SPLIT.get(entry.role)))
        if split not in SPLITS:
            raise ExportError(f"split for scene {entry.id} must be one of {SPLITS}, got {split!r}")
        return split

    def strata(self) -> list[list[list[PatchRequest]]]:
        """Candidate patches per scene (one stratum per scene), each shuffled from the seed; every
        patch is its own block (reading a local scene window costs the same either way)."""
        size, stride = self.config.patch_size, self.config.stride
        out = []
        for entry in self.scenes():
            scene = _scene(entry.id)
            h, w = scene.valid.shape
            reqs = []
            for r in grid_starts(h, size, stride):
                for c in grid_starts(w, size, stride):
                    t = scene.transform @ Affine.translation(c, r)
                    reqs.append(PatchRequest(asset=entry.id, scene_id=entry.id, epsg=scene.epsg,
                                             transform=(t.a, t.b, t.c, t.d, t.e, t.f), size=size,
                                             acquired=entry.acquired, sensor=entry.sensor,
                                             split=self.split_of(entry), stratum=entry.id))
            random.Random(f"{self.config.seed}:{entry.id}").shuffle(reqs)
            out.append([[r] for r in reqs])
        return out

    def reference_scenes(self, request: PatchRequest) -> list[tuple[_Grid, int, int]]:
        """Bundled scenes that may serve as references of ``request`` (see the module docstring), nearest
        date first (ties: earlier date, then id), with the patch's (row, col) in each."""
        target = iso_date(request.acquired)
        if target is None:
            return []
        a, b, _, d, e, _ = request.transform
        out = []
        for entry in load_catalog().values():
            if entry.id == request.scene_id or entry.role not in ROLE_SPLIT:
                continue
            grid = _grid_of(entry.id)
            if grid is None or grid.epsg != request.epsg:
                continue
            days = abs((grid.date - target).days)
            if not 0 < days <= self.config.reference_window_days:
                continue
            t = grid.transform
            if (t.a, t.b, t.d, t.e) != (a, b, d, e):
                continue
            col, row = ~t @ (request.transform[2], request.transform[5])
            if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
                continue  # another pixel grid: would need resampling
            r, c, n = int(round(row)), int(round(col)), request.size
            if r + n <= 0 or c + n <= 0 or r >= grid.height or c >= grid.width:
                continue  # does not overlap the patch
            if self.split_of(entry) != request.split:
                continue  # never across splits
            out.append((days, str(grid.date), entry.id, grid, r, c))
        return [(grid, r, c) for *_, grid, r, c in sorted(out, key=lambda item: item[:3])]

    def references(self, request: PatchRequest) -> list[Reference]:
        """Up to ``config.references`` references of the patch (nearest date first), each holding at least
        ``reference_min_valid`` of the patch as valid pixels."""
        n, want = request.size, self.config.references
        out: list[Reference] = []
        for grid, r, c in self.reference_scenes(request):
            if len(out) == want:
                break
            scene = _scene(grid.entry.id)
            h, w = scene.valid.shape
            pixels = np.zeros((3, n, n), dtype=scene.rgb.dtype)
            valid = np.zeros((n, n), dtype=bool)
            r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + n, h), min(c + n, w)
            pixels[:, r0 - r:r1 - r, c0 - c:c1 - c] = scene.rgb[:, r0:r1, c0:c1]
            valid[r0 - r:r1 - r, c0 - c:c1 - c] = scene.valid[r0:r1, c0:c1]
            if valid.mean() < self.config.reference_min_valid or not valid.any():
                continue
            out.append(Reference(pixels=pixels, valid=valid, acquired=str(grid.date), sensor=grid.entry.sensor,
                                 scene_id=grid.entry.id))
        return out

    def fetch(self, request: PatchRequest) -> Patch:
        scene = _scene(request.asset)
        col, row = ~scene.transform @ (request.transform[2], request.transform[5])
        r, c, n = int(round(row)), int(round(col)), request.size
        h, w = scene.valid.shape
        if r < 0 or c < 0 or r + n > h or c + n > w:
            raise ExportError(f"patch at row {r}, col {c} lies outside scene {request.asset} ({h}x{w})")
        missing = 1.0 - float(scene.valid[r:r + n, c:c + n].mean())
        if missing > self.config.max_nodata:
            return Patch(request, None, "nodata", missing)
        references = self.references(request) if self.config.references else []
        return Patch(request, np.ascontiguousarray(scene.rgb[:, r:r + n, c:c + n]), None, missing, references)

    def fetch_many(self, requests: list[PatchRequest]) -> list[Patch]:
        return [self.fetch(r) for r in requests]

    def scene_metadata(self) -> dict[str, dict]:
        """Per-scene facts for attrs / STAC: footprint, stretch (Landsat 8), license."""
        meta = {}
        for entry in self.scenes():
            scene = _scene(entry.id)
            h, w = scene.valid.shape
            meta[entry.id] = {"sensor": entry.sensor, "acquired": entry.acquired, "epsg": scene.epsg,
                              "transform": list(scene.transform)[:6], "shape": [h, w],
                              "stretch": scene.stretch, "split": self.split_of(entry),
                              "license": entry.license, "attribution": entry.attribution,
                              "files": entry.files}
        return meta

"""The embedded default source: real bundled Landsat GeoTIFFs tiled at native resolution.

Scenes come from ``pipeline.scenes`` (``data_catalog/scenes.json``). By default the roles
``train``, ``validation`` and ``test`` are exported, each scene into its role's split; the
Everest holdout only with ``include_holdout`` (into test), the SLC-off scenes never. Chips
without georeferencing get epsg 0 and a transform in their own pixel units (see
:mod:`pipeline.scenes`). Pixels are uint8 (Radiometry scale 1/255); Landsat 8 scenes are
percentile-stretched by ``read_scene`` and that stretch is reported by :meth:`scene_metadata`.
"""
from __future__ import annotations

import json
import random
from functools import lru_cache

import numpy as np
from affine import Affine

from pipeline.export_config import ExportConfig, ExportError
from pipeline.scenes import CATALOG_DIR, ROLE_SPLIT, SceneArray, SceneEntry, load_catalog, read_scene, scenes_with_role
from pipeline.sources.base import Patch, PatchRequest
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
        return Patch(request, np.ascontiguousarray(scene.rgb[:, r:r + n, c:c + n]), None, missing)

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

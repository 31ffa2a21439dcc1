"""Areas of interest: GeoJSON files (EPSG:4326) read with geopandas, geometry via shapely.

Each file may hold several features; a feature's ``name`` property names the AOI (default: file
stem + index) and an optional ``split`` property ("train"/"validation"/"test") pins its split.
AOIs without one are assigned deterministically from the seed so that ``test_fraction`` of them
are test and ``validation_fraction`` validation (split by AOI, never by neighbouring patch).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import shapely.ops
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from pipeline.export_config import ExportError
from pipeline.store import SPLITS


@dataclass(frozen=True)
class AOI:
    name: str
    geometry: BaseGeometry  # lon/lat (EPSG:4326)
    split: str | None

    def utm_epsg(self) -> int:
        """EPSG of the WGS 84 UTM zone holding the AOI's centroid (326xx north, 327xx south)."""
        return utm_epsg(self.geometry.centroid.x, self.geometry.centroid.y)


def utm_epsg(lon: float, lat: float) -> int:
    zone = min(60, max(1, int((lon + 180.0) // 6) + 1))
    return (32600 if lat >= 0 else 32700) + zone


def read_aois(paths: list[Path]) -> list[AOI]:
    """Read AOI files; a missing/invalid file or an empty geometry raises :class:`ExportError`."""
    if not paths:
        raise ExportError("no AOI files given (put GeoJSON files in data_catalog/aois/ or pass --aoi)")
    aois: list[AOI] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"AOI file {path} does not exist")
        try:
            frame = gpd.read_file(path)
        except Exception as exc:
            raise ExportError(f"AOI file {path} is not readable GeoJSON: {exc}") from exc
        if frame.empty:
            raise ExportError(f"AOI file {path} holds no features")
        if frame.crs is not None and CRS.from_user_input(frame.crs).to_epsg() != 4326:
            frame = frame.to_crs(4326)
        for i, row in frame.iterrows():
            geom = row.geometry
            name = str(row.get("name") or f"{path.stem}_{i}")
            if geom is None or geom.is_empty or geom.area == 0.0:
                raise ExportError(f"AOI {name!r} in {path} has an empty geometry (need a polygon with area)")
            if not geom.is_valid:
                geom = shapely.make_valid(geom)
            split = row.get("split") if "split" in frame.columns else None
            if split is not None and split == split and split not in SPLITS:
                raise ExportError(f"AOI {name!r} in {path}: split must be one of {SPLITS}, got {split!r}")
            aois.append(AOI(name, geom, split if isinstance(split, str) else None))
    names = [a.name for a in aois]
    if len(set(names)) != len(names):
        raise ExportError(f"AOI names must be unique, got {names}")
    return aois


def assign_splits(aois: list[AOI], seed: int, test_fraction: float, validation_fraction: float = 0.0) -> dict[str, str]:
    """AOI name -> split: the AOI's own ``split`` property, else a seeded draw by AOI
    (``test_fraction`` of the free AOIs to test, then ``validation_fraction`` to validation)."""
    free = sorted(a.name for a in aois if a.split is None)
    random.Random(f"split:{seed}").shuffle(free)
    n_test = round(len(free) * test_fraction)
    n_val = round(len(free) * validation_fraction)
    out = {name: ("test" if i < n_test else "validation" if i < n_test + n_val else "train")
           for i, name in enumerate(free)}
    out.update({a.name: a.split for a in aois if a.split is not None})
    return out


def to_utm(geom: BaseGeometry, epsg: int) -> BaseGeometry:
    tr = Transformer.from_crs(4326, epsg, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def grid_cells(region_utm: BaseGeometry, pixel_m: float, size: int,
               origin: tuple[float, float] = (0.0, 0.0)) -> list[tuple[float, float]]:
    """Upper-left corners (x, y) of ``size`` x ``size`` cells of ``pixel_m`` pixels, aligned to
    multiples of the cell width from ``origin`` (e.g. the scene's native pixel grid), lying wholly
    inside ``region_utm``; north-up, row-major."""
    cell = pixel_m * size
    ox, oy = origin[0] % cell, origin[1] % cell
    minx, miny, maxx, maxy = region_utm.bounds
    x0 = ((minx - ox) // cell) * cell + ox
    y0 = -((-(maxy - oy)) // cell) * cell + oy
    cells = []
    y = y0
    while y - cell >= miny - cell:
        x = x0
        while x <= maxx:
            if region_utm.contains(shapely.box(x, y - cell, x + cell, y)):
                cells.append((x, y))
            x += cell
        y -= cell
    return cells

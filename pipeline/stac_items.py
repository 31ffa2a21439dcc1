"""STAC (pystac) description of an export store: one Item per scene plus a Collection.

Written beside the store as ``<store>.stac/`` (self-contained catalog, replaced atomically).
Each Item: footprint (EPSG:4326) of the scene's exported patches (block cells planned ``outside``
the AOI or footprint excluded), acquisition date (or the
collection's open interval when unknown), ``proj:epsg``, sensor, split, patch counts, and the
source's per-scene facts (Landsat 8 percentile stretch, license, attribution) where known.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pystac
import shapely.geometry
from pyproj import Transformer

from pipeline.atomic_io import atomic_dir
from pipeline.store import read_meta


def _footprint(transforms: np.ndarray, epsg: int, size: int) -> shapely.geometry.Polygon:
    xs = np.concatenate([transforms[:, 2], transforms[:, 2] + transforms[:, 0] * size])
    ys = np.concatenate([transforms[:, 5], transforms[:, 5] + transforms[:, 4] * size])
    box = shapely.geometry.box(xs.min(), ys.min(), xs.max(), ys.max())
    if not epsg:
        return box
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    return shapely.geometry.Polygon([tr.transform(x, y) for x, y in box.exterior.coords])


def _date(acquired: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(acquired[:10]).replace(tzinfo=dt.timezone.utc) if len(acquired) >= 10 else None
    except ValueError:
        return None


def build_catalog(group, store_path: Path) -> pystac.Collection:
    """A Collection (the store) with one Item per scene found in it."""
    scene_ids = group["scene_id"][:]
    transforms = group["transform"][:]
    epsgs = group["epsg"][:]
    valid = group["valid"][:]
    splits = group["split"][:]
    sensors = group["sensor"][:]
    acquired = group["acquired"][:]
    outside = group["skip_reason"][:] == "outside" if "skip_reason" in group else np.zeros(len(valid), bool)
    store_meta = read_meta(group)
    size, meta = store_meta.patch_size, store_meta.scenes
    items = []
    for sid in sorted(set(scene_ids.tolist())):
        rows = np.flatnonzero(scene_ids == sid)
        planned = rows[~outside[rows]] if (~outside[rows]).any() else rows
        geom = _footprint(transforms[planned], int(epsgs[rows[0]]), size)
        when = _date(str(acquired[rows[0]]))
        extra = {k: v for k, v in meta.get(sid, {}).items() if k in ("stretch", "license", "attribution", "shape")}
        props = {"edgefill:sensor": str(sensors[rows[0]]), "edgefill:split": str(splits[rows[0]]),
                 "edgefill:candidates": int(len(planned)), "edgefill:valid_patches": int(valid[rows].sum()),
                 "proj:epsg": int(epsgs[rows[0]]), **{f"edgefill:{k}": v for k, v in extra.items()}}
        if when is None:
            props.update({"start_datetime": "1999-04-15T00:00:00Z", "end_datetime": "2026-01-01T00:00:00Z"})
        item = pystac.Item(id=sid, geometry=shapely.geometry.mapping(geom), bbox=list(geom.bounds),
                           datetime=when, properties=props)
        item.add_asset("store", pystac.Asset(href=os.path.relpath(store_path, store_path.parent),
                                             media_type="application/vnd+zarr", roles=["data"],
                                             title="edgefill patch store (rows where scene_id == item id)"))
        items.append(item)
    bboxes = [it.bbox for it in items] or [[-180, -90, 180, 90]]
    spatial = pystac.SpatialExtent([[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                                     max(b[2] for b in bboxes), max(b[3] for b in bboxes)]])
    collection = pystac.Collection(
        id=f"edgefill-{store_path.stem}", description=f"Landsat patches exported by edgefill into {store_path.name} "
        f"(config hash {store_meta.config_hash}, source {store_meta.source})",
        extent=pystac.Extent(spatial, pystac.TemporalExtent([[None, None]])), license="various",
        extra_fields={"edgefill:config_hash": store_meta.config_hash,
                      "edgefill:radiometry": store_meta.radiometry.model_dump(mode="json"),
                      "edgefill:bands": store_meta.bands})
    for item in items:
        collection.add_item(item)
    return collection


def write_stac_catalog(group, store_path: str | Path) -> Path:
    """Write the catalog to ``<store>.stac/collection.json`` (atomically replaced)."""
    store_path = Path(store_path)
    dest = store_path.parent / f"{store_path.name}.stac"
    collection = build_catalog(group, store_path)
    with atomic_dir(dest, replace=True) as tmp:
        # the trailing separator: pystac takes a root with a suffix ("x.y") for a file otherwise
        collection.normalize_and_save(f"{tmp}{os.sep}", catalog_type=pystac.CatalogType.SELF_CONTAINED)
        # item asset hrefs point from <store>.stac/<item>/ to the store
        for item_json in tmp.glob("*/*.json"):
            text = item_json.read_text().replace(f'"href": "{store_path.name}"', f'"href": "../../{store_path.name}"')
            item_json.write_text(text)
    return dest / "collection.json"

"""The bundled data: lossless compressed copies of the real rasters, the catalog, the tree's size."""
from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.scenes import CATALOG_DIR, load_catalog, read_scene

ROOT = Path(__file__).resolve().parent.parent
MAX_TRACKED_BYTES = 40 * 2 ** 20  # the whole tree travels to the GPU machine under 64 MiB with wheels and data


def _pixel_hash(path: Path) -> str:
    with warnings.catch_warnings(), rasterio.open(path) as src:
        warnings.simplefilter("ignore")
        a = src.read()
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_bundled_rasters_decode_to_the_original_pixels_and_are_compressed():
    manifest = json.loads((CATALOG_DIR / "scenes" / "PIXEL_SHA256.json").read_text())["pixels_sha256"]
    tifs = sorted(p.relative_to(CATALOG_DIR / "scenes").as_posix()
                  for p in (CATALOG_DIR / "scenes").rglob("*") if p.suffix.lower() in (".tif", ".tiff"))
    assert tifs == sorted(manifest)  # every bundled raster is accounted for
    for rel, digest in manifest.items():
        path = CATALOG_DIR / "scenes" / rel
        assert _pixel_hash(path) == digest, rel
        with warnings.catch_warnings(), rasterio.open(path) as src:
            warnings.simplefilter("ignore")
            assert (src.compression is not None and src.compression.value in ("DEFLATE", "ZSTD", "LZW")), rel


def test_tracked_files_stay_under_40_mib():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    total = sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())
    assert total < MAX_TRACKED_BYTES, f"tracked files take {total / 2 ** 20:.1f} MiB (limit 40 MiB)"


def test_catalog_scenes_exist_with_licence_and_split_groups():
    catalog = load_catalog()
    roles = {s.role for s in catalog.values()}
    assert {"train", "validation", "test", "holdout"} <= roles
    for entry in catalog.values():
        assert entry.license and entry.attribution, entry.id
        assert all(entry.path(f).is_file() for f in entry.files), entry.id
    groups: dict[str, set[str]] = {}
    for entry in catalog.values():  # a place (group) never straddles training and evaluation
        if entry.role in ("train", "validation", "test"):
            groups.setdefault(entry.split_group, set()).add(entry.role)
    assert all(len(r) == 1 for r in groups.values()), {g: r for g, r in groups.items() if len(r) > 1}
    assert catalog["LE07_140041_20001030_EVEREST"].role == "holdout"


def test_chips_without_georeferencing_get_no_invented_crs():
    scene = read_scene("LE07_P034R032_20010924_C01")
    assert scene.epsg == 0 and scene.transform.is_identity and scene.rgb.shape == (3, 400, 400)
    pos = scene.entry.source_position
    assert pos["path"] == 34 and pos["row"] == 32 and pos["width"] == 400
    with pytest.raises(KeyError, match="unknown scene"):
        read_scene("LE07_NOWHERE")

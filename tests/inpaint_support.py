"""Shared helpers for the scene-inpainting tests (issue 5): real inputs and a tiny untrained model.

Real inputs are the bundled scenes: Landsat 7 SLC-off stacks (B3,B2,B1) with their real gap
masks, Everest with the real SLC-off pattern, Landsat 5 with its real BQA.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.scenes import get_scene

SLC_A = "LE07_039028_20100702_SLCOFF"  # 727 x 727, real stripes everywhere, C1 BQA
SLC_B = "LE07_041027_20070505_SLCOFF"  # 623 x 624, edge wedges + stripes on the east edge
LT05 = "LT05_040028_20060706"          # 727 x 727, real C1 BQA with cloud + shadow


def stack_scene(scene_id: str, path: Path, window: rasterio.windows.Window | None = None,
                nodata: float | None = None) -> Path:
    """Stack a bundled scene's RGB band files (B3,B2,B1, raw stored values) into one GeoTIFF,
    keeping the georeferencing; optionally a window of it."""
    entry = get_scene(scene_id)
    planes = []
    for band_path, band in entry.band_files():
        with rasterio.open(band_path) as src:
            planes.append(src.read(band, window=window))
            transform = src.window_transform(window) if window is not None else src.transform
            crs, dtype = src.crs, src.dtypes[band - 1]
    data = np.stack(planes)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3,
                       dtype=dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for i, name in enumerate(entry.band_names, start=1):
            dst.set_band_description(i, name)
    return path


def real_gap_mask(scene_id: str) -> np.ndarray:
    """The scene's bundled real gap mask, True = hole."""
    entry = get_scene(scene_id)
    with rasterio.open(entry.path(entry.gap_mask)) as src:
        return src.read(1) == 255


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """An untrained tiny model saved as a run dir (mechanics only: no training in tests)."""
    import torch

    from models.checkpoint import save_inference_bundle
    from models.config import ModelConfig
    from models.networks import EdgeGenerator, InpaintGenerator

    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    run = tmp_path_factory.mktemp("runs") / "tiny-untrained"
    save_inference_bundle(run, edge_generator=EdgeGenerator(cfg), inpaint_generator=InpaintGenerator(cfg),
                          model_config=cfg, name="tiny-untrained")
    return run


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run):
    from models.checkpoint import load_inference_bundle

    return load_inference_bundle(tiny_run)


class CallCounter:
    """Counts forward calls of both generators (forward pre-hooks)."""

    def __init__(self, bundle):
        self.calls = 0
        self._handles = [net.register_forward_pre_hook(self._hook)
                         for net in (bundle.edge_generator, bundle.inpaint_generator)]

    def _hook(self, module, args):
        self.calls += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class Untouched:
    """Snapshot of an input file (bytes, mtime) and of its folder's listing: ``check()`` asserts
    that running the inpainting changed none of them (no rewrite, no .aux.xml / .ovr sidecar)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.blob = self.path.read_bytes()
        self.mtime = self.path.stat().st_mtime_ns
        self.listing = sorted(p.name for p in self.path.parent.iterdir())

    def check(self) -> None:
        assert self.path.read_bytes() == self.blob, f"{self.path} was modified"
        assert self.path.stat().st_mtime_ns == self.mtime, f"{self.path} mtime changed"
        assert sorted(p.name for p in self.path.parent.iterdir()) == self.listing, "files appeared beside the input"


def assert_complete_outputs(output: Path) -> None:
    """Exactly the four outputs beside each other, no temp dir left behind."""
    stem = output.with_suffix("").name
    assert sorted(p.name for p in output.parent.iterdir()) == sorted(
        [output.name, f"{stem}.filled_mask.tif", f"{stem}.quicklook.png", f"{stem}.stac.json"])


def assert_same_grid(src_path: Path, out_path: Path) -> None:
    """Georeferencing, size, dtype and nodata kept."""
    with rasterio.open(src_path) as a, rasterio.open(out_path) as b:
        assert (b.crs, b.transform, b.shape, b.count, b.dtypes) == (a.crs, a.transform, a.shape, a.count, a.dtypes)
        assert (a.nodata is None and b.nodata is None) or a.nodata == b.nodata or \
            (np.isnan(a.nodata) and np.isnan(b.nodata))

"""Windowed GeoTIFF reading/writing for scene inpainting: validation, radiometry, atomic COG output.

Conventions
- Band indices are rasterio's (1-based). The default RGB selection is the scene's first three
  bands, taken as red, green, blue (Landsat 5/7 B3,B2,B1 stacks).
- Hole / invalid masks: True = missing (docs/DESIGN.md).
- A scene's *own* invalid pixels ("nodata"): any selected band equal to the nodata value (or NaN
  for floats); with no nodata value, GDAL's internal/alpha mask when the file has one, else
  Landsat L1 fill, i.e. DN 0 in any selected band (integer dtypes) or NaN (floats).
- Everything is written inside :class:`AtomicOutputs` (a temp dir next to the outputs, renamed
  into place at the end): a failure never leaves a partial output.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.windows import Window

#: GDAL block cache during scene processing (MB): keeps RSS independent of scene size.
GDAL_CACHE_MB = 32
SUPPORTED_DTYPES = ("uint8", "uint16", "float32")


class RasterInputError(ValueError):
    """A scene (or an auxiliary raster) cannot be used: unreadable, no CRS, wrong bands, ..."""


@dataclass(frozen=True)
class SceneInfo:
    """What we need to know about an input scene (read once from its header)."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS
    transform: Affine
    nodata: float | None
    bands: tuple[int, ...]
    descriptions: tuple[str | None, ...]
    has_internal_mask: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def gdal_env(**options) -> rasterio.Env:
    """rasterio.Env with a bounded block cache (plus any extra GDAL options)."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, **options)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """'4,3,2' -> (4, 3, 2); None/'' -> None (default selection)."""
    if not text:
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError as exc:
        raise RasterInputError(f"--bands must be comma-separated band numbers like 3,2,1, got {text!r}") from exc
    return bands


def inspect_scene(path: str | Path, bands: tuple[int, ...] | None = None, n_bands: int = 3) -> SceneInfo:
    """Open ``path``'s header and check it can be inpainted: readable, georeferenced, enough bands.

    Raises :class:`RasterInputError` naming the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise RasterInputError(f"input scene {path} does not exist")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise RasterInputError(f"cannot open {path} as a raster (not a GeoTIFF, or truncated): {exc}") from exc
    with src:
        info = _scene_info(src, path, bands, n_bands)
        try:  # the last row of pixels: a truncated TIFF has a valid header but not all its data
            src.read(1, window=Window(0, src.height - 1, src.width, 1))
        except rasterio.errors.RasterioIOError as exc:
            cause = exc.__cause__ or exc.__context__ or exc
            raise RasterInputError(f"{path} is truncated or corrupt: its last pixel row cannot be read "
                                   f"({cause})") from exc
    return info


def _scene_info(src, path: Path, bands: tuple[int, ...] | None, n_bands: int) -> SceneInfo:
    if src.crs is None:
        raise RasterInputError(f"{path} has no CRS: the output could not be georeferenced "
                               f"(assign one first, e.g. gdal_edit.py -a_srs EPSG:XXXX)")
    if src.transform == Affine.identity():
        raise RasterInputError(f"{path} has no geotransform")
    if bands is None:
        if src.count < n_bands:
            raise RasterInputError(f"{path} has {src.count} band(s) but {n_bands} are needed "
                                   f"(red, green, blue); pass --bands to choose them")
        bands = tuple(range(1, n_bands + 1))
    if len(bands) != n_bands:
        raise RasterInputError(f"{n_bands} bands are needed, got --bands {bands}")
    bad = [b for b in bands if not 1 <= b <= src.count]
    if bad:
        raise RasterInputError(f"band(s) {bad} out of range: {path} has bands 1..{src.count}")
    dtypes = {src.dtypes[b - 1] for b in bands}
    if len(dtypes) != 1 or next(iter(dtypes)) not in SUPPORTED_DTYPES:
        raise RasterInputError(f"{path}: bands {bands} have dtype(s) {sorted(dtypes)}; "
                               f"supported: one of {SUPPORTED_DTYPES}")
    flags = src.mask_flag_enums[bands[0] - 1]
    internal = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
    return SceneInfo(path=path, width=src.width, height=src.height, count=src.count,
                     dtype=next(iter(dtypes)), crs=src.crs, transform=src.transform, nodata=src.nodata,
                     bands=tuple(bands), descriptions=tuple(src.descriptions[b - 1] for b in bands),
                     has_internal_mask=internal and src.nodata is None)


def read_bands(src, info: SceneInfo, window: Window) -> np.ndarray:
    """(3, h, w) stored values of the selected bands inside ``window`` (clipped to the scene)."""
    return src.read(list(info.bands), window=window)


def nodata_from_values(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) bool, True = invalid judged from the (C, h, w) values alone: NaN (floats), any band
    equal to ``nodata``, or with no nodata value Landsat L1 fill (DN 0 in any band, integers)."""
    invalid = np.zeros(data.shape[1:], bool)
    if np.issubdtype(data.dtype, np.floating):
        invalid |= np.isnan(data).any(axis=0)
    if nodata is not None:
        if not np.isnan(nodata):
            invalid |= (data == nodata).any(axis=0)
    elif np.issubdtype(data.dtype, np.integer):
        invalid |= (data == 0).any(axis=0)
    return invalid


def nodata_mask(src, info: SceneInfo, data: np.ndarray, window: Window) -> np.ndarray:
    """(h, w) bool, True = the scene's own invalid pixel (see module docstring)."""
    if info.nodata is not None or not info.has_internal_mask:
        return nodata_from_values(data, info.nodata)
    invalid = src.read_masks(info.bands[0], window=window) == 0
    if np.issubdtype(data.dtype, np.floating):
        invalid |= np.isnan(data).any(axis=0)
    return invalid


def window_transform(info: SceneInfo, window: Window) -> Affine:
    return rasterio.windows.transform(window, info.transform)


def output_profile(info: SceneInfo, count: int | None = None, dtype: str | None = None,
                   nodata: float | None = "same") -> dict:
    """A GTiff profile on the scene's grid for the streaming intermediate before COG: strips of
    16 rows, so row-strip writes complete whole blocks and none waits in GDAL's cache."""
    return dict(driver="GTiff", width=info.width, height=info.height, count=count or len(info.bands),
                dtype=dtype or info.dtype, crs=info.crs, transform=info.transform,
                nodata=info.nodata if nodata == "same" else nodata,
                tiled=False, blockysize=16, compress="LZW", BIGTIFF="IF_SAFER")


def to_cog(src_path: Path, dst_path: Path, *, predictor: int = 2, resampling: str = "NEAREST") -> None:
    """Translate a GeoTIFF into a Cloud-Optimized GeoTIFF with GDAL's COG driver (streams by
    blocks; DEFLATE compression, internal overviews, band descriptions and nodata kept)."""
    with gdal_env():
        rasterio.shutil.copy(str(src_path), str(dst_path), driver="COG", COMPRESS="DEFLATE",
                             PREDICTOR=str(predictor), OVERVIEWS="AUTO", OVERVIEW_RESAMPLING=resampling,
                             BLOCKSIZE="512", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")


class AtomicOutputs:
    """Collects output files in a hidden temp dir next to the final paths; ``commit`` renames
    them all into place. Used as a context manager: on an exception nothing is renamed and the
    temp dir is removed."""

    def __init__(self, final_paths: list[Path]):
        self.final_paths = [Path(p).resolve() for p in final_paths]
        parent = self.final_paths[0].parent
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=f".{self.final_paths[0].name}.", suffix=".tmp", dir=parent))

    def temp(self, final: Path | str) -> Path:
        """The temp path standing for ``final`` (or a scratch name when ``final`` is a plain name)."""
        final = Path(final)
        return self.tmp_dir / (final.name if final.resolve() in self.final_paths else f"scratch-{uuid.uuid4().hex}-{final.name}")

    def commit(self) -> None:
        for final in self.final_paths:
            os.replace(self.tmp_dir / final.name, final)

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


@contextmanager
def open_scene(info: SceneInfo) -> Iterator:
    with gdal_env(), rasterio.open(info.path) as src:
        yield src

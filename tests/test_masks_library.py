"""Mask library: real QD-IMD loader (polarity, size), irregular strokes, real crops, bins."""
import cv2
import numpy as np
import pytest

from pipeline.masks import RATIO_BINS, MaskError, hole_ratio, ratio_bin
from pipeline.masks.from_rasters import crops_in_range, real_cloud_masks, real_nodata_masks
from pipeline.masks.irregular import irregular_mask
from pipeline.masks.library import MaskKindSpec, MaskLibraryConfig, assign_sources, build_mask_library
from pipeline.masks.qd_imd import DEFAULT_QD_IMD_DIR, load_qd_imd_folder
from prepare_helpers import small_mask_config


def test_shipped_qd_imd_white_on_black():
    masks, polarity = load_qd_imd_folder()
    assert polarity == "white_hole"
    assert masks.shape == (6, 256, 256) and masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 1}
    # holes keep their area through the 250 -> 256 resize (SOURCES: 8-29 % bright)
    src = np.stack([cv2.imread(str(p), 0) for p in sorted(DEFAULT_QD_IMD_DIR.glob("*.png"))])
    np.testing.assert_allclose(hole_ratio(masks), (src > 127).reshape(6, -1).mean(1), atol=0.01)


def test_original_polarity_512_black_strokes(tmp_path):
    """Originals are 512x512 black strokes on white: the loader flips them to 1 = hole."""
    shipped, _ = load_qd_imd_folder()
    for i, p in enumerate(sorted(DEFAULT_QD_IMD_DIR.glob("*.png"))[:3]):
        g = cv2.resize(cv2.imread(str(p), 0), (512, 512), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(tmp_path / f"{i}.png"), 255 - g)
    masks, polarity = load_qd_imd_folder(tmp_path)
    assert polarity == "black_hole"
    agree = (masks == shipped[:3]).mean()
    assert agree > 0.98
    forced, _ = load_qd_imd_folder(tmp_path, polarity="white_hole")  # wrong declared polarity inverts
    assert (forced != masks).mean() > 0.95


def test_qd_imd_bad_folders(tmp_path):
    with pytest.raises(MaskError, match="does not exist"):
        load_qd_imd_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskError, match="no .png"):
        load_qd_imd_folder(tmp_path / "empty")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    cv2.imwrite(str(wrong / "a.png"), np.zeros((300, 300), np.uint8))
    with pytest.raises(MaskError, match="not a QD-IMD mask"):
        load_qd_imd_folder(wrong)
    amb = tmp_path / "amb"
    amb.mkdir()
    half = np.zeros((512, 512), np.uint8)
    half[:, :256] = 255
    cv2.imwrite(str(amb / "a.png"), half)
    with pytest.raises(MaskError, match="ambiguous polarity"):
        load_qd_imd_folder(amb)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    few = np.zeros((512, 512), np.uint8)
    few[:50] = 255
    cv2.imwrite(str(mixed / "a.png"), few)
    cv2.imwrite(str(mixed / "b.png"), 255 - few)
    with pytest.raises(MaskError, match="disagree on polarity"):
        load_qd_imd_folder(mixed)


@pytest.mark.parametrize("lo,hi", RATIO_BINS)
def test_irregular_hits_each_bin(lo, hi):
    rng = np.random.default_rng(3)
    ratios = [irregular_mask(rng, 256, (lo, hi)).mean() for _ in range(5)]
    assert all(lo <= r < hi for r in ratios)


def test_irregular_deterministic_and_bad_range():
    a = irregular_mask(np.random.default_rng(9), 128, (0.2, 0.3))
    np.testing.assert_array_equal(a, irregular_mask(np.random.default_rng(9), 128, (0.2, 0.3)))
    with pytest.raises(MaskError, match="low < high"):
        irregular_mask(np.random.default_rng(0), 64, (0.5, 0.4))


def test_real_cloud_and_nodata_sources():
    clouds = real_cloud_masks()
    assert len(clouds) == 5  # 3 Collection-1 / pre-collection BQA + 2 QA_PIXEL
    assert 0.2 < clouds[0].mean() < 0.25  # LT05: 10.5 % cloud + 11.5 % shadow
    nodata = real_nodata_masks()
    assert nodata and all(0.01 < m.mean() < 0.6 for m in nodata)


def test_crops_in_range_and_unfillable_bin():
    src = np.zeros((300, 300), bool)
    src[:, :90] = True  # windows hold 0-35 % holes
    crops = crops_in_range([src], 6, 256, (0.2, 0.3), np.random.default_rng(0), kind="demo")
    assert crops.shape == (6, 256, 256) and all(0.2 <= r < 0.3 for r in hole_ratio(crops))
    with pytest.raises(MaskError, match="cannot be filled for kind 'demo'"):
        crops_in_range([src], 2, 256, (0.5, 0.6), np.random.default_rng(0), kind="demo")


def test_library_deterministic_binned_and_split():
    lib = build_mask_library(small_mask_config())
    n = 6 + 25 + 15 + 10 + 10 + 10  # the six QD-IMD files + every kind's count
    assert lib.masks.shape == (n, 256, 256) and len(lib.kinds) == len(lib.ratios) == len(lib.splits) == n
    np.testing.assert_allclose(lib.ratios, hole_ratio(lib.masks))
    for kind, n_bins in (("irregular", 5), ("slc_off", 3)):   # procedural kinds fill every bin of every split
        for split in ("train", "validation", "test"):
            bins = ratio_bin(lib.ratios[(lib.kinds == kind) & (lib.splits == split)])
            assert sorted(set(bins.tolist())) == list(range(n_bins)), (kind, split)
    for kind in ("irregular", "slc_off", "slc_off_real", "cloud", "nodata"):  # 60 / 20 / 20 of each count
        counts = {s: int(((lib.kinds == kind) & (lib.splits == s)).sum()) for s in ("train", "validation", "test")}
        total = sum(counts.values())
        assert counts["validation"] == counts["test"] == round(total * 0.2), (kind, counts)
    train = {m.tobytes() for m in lib.masks[lib.splits == "train"]}
    assert not train & {m.tobytes() for m in lib.masks[lib.splits != "train"]}  # no mask on both sides
    again = build_mask_library(small_mask_config())
    np.testing.assert_array_equal(lib.masks, again.masks)
    other = build_mask_library(small_mask_config(seed=1))
    assert not np.array_equal(lib.masks, other.masks)


def test_real_sources_go_to_one_side_only():
    """Whole source rasters are assigned: never one raster to both training and evaluation."""
    usable = [500, 400, 300, 0, 200, 100]
    sides = assign_sources(usable, {"train": 0.6, "validation": 0.2, "test": 0.2})
    train, evaluation = set(sides["train"]), set(sides["validation"]) | set(sides["test"])
    assert not train & evaluation and train | evaluation == set(range(6))
    assert set(sides["validation"]).isdisjoint(sides["test"]) and sides["validation"] and sides["test"]
    lone = assign_sources([10, 5], {"train": 0.6, "validation": 0.2, "test": 0.2})
    assert lone == {"train": [0], "validation": [1], "test": [1]}  # a lone evaluation raster serves both
    with pytest.raises(MaskError, match="one source raster cannot serve both"):
        assign_sources([10], {"train": 0.6, "validation": 0.2, "test": 0.2})


def test_library_unfillable_bin_is_a_clear_error():
    cfg = MaskLibraryConfig(kinds=[MaskKindSpec(kind="slc_off", count=2, bins=[(0.5, 0.6)])])
    with pytest.raises(MaskError, match="slc_off masks cannot reach the 50%-60% bin"):
        build_mask_library(cfg)
    with pytest.raises(MaskError, match="no masks"):
        build_mask_library(MaskLibraryConfig(kinds=[]))

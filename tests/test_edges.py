"""Edges: agreement with EdgeConnect's reference (skimage canny, sigma 2) on REAL patches."""
import numpy as np
import pytest

from pipeline.scenes import read_scene
from skimage.color import rgb2gray
from skimage.feature import canny

from pipeline.edges import EdgeParams, canny_edges, edges_for_batch, rgb_to_gray
from pipeline.store import open_store, store_radiometry


@pytest.fixture(scope="module")
def real_patches01():
    """Real 256 px patches of textured scenes (Landsat 8 Itaipu, Landsat 5 040028, Landsat 7 Olinda)."""
    out = []
    for scene_id in ("LC08_224078_20200518_ITAIPU", "LT05_040028_20060706", "LE07_OLINDA_STARS"):
        scene = read_scene(scene_id)
        h, w = scene.valid.shape
        for r in range(0, h - 255, 256):
            for c in range(0, w - 255, 256):
                if scene.valid[r:r + 256, c:c + 256].all() and len(out) < 10:
                    out.append(scene.rgb[:, r:r + 256, c:c + 256].astype(np.float32) / 255.0)
    return np.stack(out)


def test_gray_matches_skimage(real_patches01):
    x = real_patches01[:2]
    ref = np.stack([rgb2gray(np.moveaxis(p, 0, -1)) for p in x])
    np.testing.assert_allclose(rgb_to_gray(x), ref, atol=1e-5)


def test_agrees_with_skimage_canny_on_real_patches(real_patches01):
    gray = rgb_to_gray(real_patches01)
    tp = fp = fn = 0
    for g in gray:
        ours, ref = canny_edges(g), canny(g.astype(np.float64), sigma=2.0)
        tp += int((ours & ref).sum())
        fp += int((ours & ~ref).sum())
        fn += int((~ours & ref).sum())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f1 = 2 * tp / (2 * tp + fp + fn)
    print(f"edges vs skimage canny on {len(gray)} real patches: P={precision:.3f} R={recall:.3f} F1={f1:.3f}")
    assert f1 > 0.85 and precision > 0.82 and recall > 0.82
    density = (tp + fp) / gray.size
    assert 0.01 < density < 0.3  # real textures: some, not all, pixels are edges


def test_batch_equals_single_and_format(real_patches01):
    x = real_patches01[:3]
    out = edges_for_batch(x)
    assert out.shape == (3, 1, 256, 256) and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    for i in range(3):
        np.testing.assert_array_equal(out[i, 0], canny_edges(rgb_to_gray(x[i])))
    assert not out[:, :, 0, :].any() and not out[:, :, :, -1].any()  # image border is never an edge


def test_valid_mask_suppresses_edges_next_to_missing(real_patches01):
    g = rgb_to_gray(real_patches01[0])
    valid = np.ones_like(g, bool)
    valid[100:140, :] = False
    e = canny_edges(g, valid=valid)
    assert not e[99:141].any()
    ref = canny(g.astype(np.float64), sigma=2.0, mask=valid)
    agree = (e & ref).sum() * 2 / (e.sum() + ref.sum())
    assert agree > 0.85


def test_thresholds_change_edges(real_patches01):
    g = rgb_to_gray(real_patches01[0])
    assert canny_edges(g, EdgeParams(low_threshold=0.05, high_threshold=0.1)).sum() > canny_edges(g).sum()


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        canny_edges(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        edges_for_batch(np.zeros((2, 4, 8, 8)))
    with pytest.raises(ValueError, match="valid shape"):
        canny_edges(np.zeros((8, 8)), valid=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="low_threshold"):
        EdgeParams(low_threshold=0.3, high_threshold=0.2)

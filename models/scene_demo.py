"""The Everest demo: a real Landsat 7 scene with a REAL SLC-off gap pattern laid over it, so the
truth under the gaps is known. The model's fill is compared with GDAL FillNodata.

- Scene: ``LE07_140041_20001030_EVEREST`` (holdout role: never in the demo's training data),
  800 x 655 px, 30 m, uint8 B3,B2,B1, EPSG:32645. It holds no DN 0, so nodata 0 is safe (checked).
- Gaps: the real SLC-off fill mask of Geoscience Australia's LS7 ETM+ 095/082 2010-01-16 scene
  (``data_catalog/scenes/landsat7_slc_off/derived/..._nodata_mask.tif``, 255 = hole), window
  rows 150-804, cols 1750-2549: ~9 % holes, diagonal scan-line stripes only (no edge fill,
  not the large blob; pieces < 200 px of source speckle dropped).
- Metrics on hole pixels only, the evaluation's own (:mod:`models.metrics`): PSNR and SSIM
  (Gaussian 11 px window, sigma 1.5) on DN / 255, SSIM map averaged over the hole pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field
from rasterio.windows import Window

from models.baselines import run_baseline
from models.metrics import psnr, ssim
from pipeline.atomic_io import atomic_path, atomic_write_text
from pipeline.scenes import CATALOG_DIR, read_scene

EVEREST_ID = "LE07_140041_20001030_EVEREST"
GAP_MASK = CATALOG_DIR / "scenes/landsat7_slc_off/derived/LS7_ETM_095_082_20100116_B30_nodata_mask.tif"
GAP_WINDOW = Window(col_off=1750, row_off=150, width=800, height=655)


class EverestDemoConfig(BaseModel):
    """The Everest demo (``edgefill inpaint-demo``; the ``inpaint-scene`` flow without a scene, its
    ``everest-demo`` deployment): the one declaration of its parameters and defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field("current", description="run dir or registry name")
    out_dir: Path = Field(Path("demo_out/everest"), description="folder of the demo's files and summary.md")
    device: str = Field("cpu", description="cpu | cuda")
    pictures_dir: Path | None = Field(None, description="also write the README's pictures (everest_demo.png, "
                                                        "everest_zoom.png) into this folder")


def real_gap_pattern(height: int = 655, width: int = 800, window: Window = GAP_WINDOW,
                     min_stripe_px: int = 200) -> np.ndarray:
    """(height, width) bool, True = real SLC-off gap, cropped from the bundled gap mask.

    Connected pieces smaller than ``min_stripe_px`` are dropped: in this window they are speckle
    of the source product's -999 fill (~7 % of the masked pixels), not scan-line gaps."""
    import cv2

    win = Window(window.col_off, window.row_off, width, height)
    with rasterio.open(GAP_MASK) as src:
        if win.row_off + height > src.height or win.col_off + width > src.width:
            raise ValueError(f"gap window {win} exceeds the gap mask ({src.width}x{src.height})")
        gaps = src.read(1, window=win) == 255
    if min_stripe_px > 1:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(gaps.astype(np.uint8), connectivity=8)
        keep = np.zeros(n, bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_stripe_px
        gaps = keep[labels]
    return gaps


def write_gapped_everest(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write Everest with the real gap pattern as nodata 0 (Everest's georeferencing) to ``path``.

    Returns (truth (3, H, W) uint8, hole (H, W) bool)."""
    scene = read_scene(EVEREST_ID)
    truth = scene.rgb
    if (truth == 0).any():
        raise ValueError(f"{EVEREST_ID} holds DN 0: nodata 0 would be ambiguous")
    hole = real_gap_pattern(*truth.shape[1:])
    gapped = np.where(hole[None], 0, truth).astype(np.uint8)
    profile = dict(driver="GTiff", width=truth.shape[2], height=truth.shape[1], count=3, dtype="uint8",
                   crs=rasterio.crs.CRS.from_epsg(scene.epsg), transform=scene.transform, nodata=0,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(gapped)
        for i, name in enumerate(scene.entry.band_names, start=1):
            dst.set_band_description(i, name)
    return truth, hole


def masked_metrics(pred: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    """Hole PSNR (dB) / SSIM of uint8 (3, H, W) ``pred`` versus ``truth``, on DN / 255 (data
    range 1): the evaluation's own metrics (:mod:`models.metrics`)."""
    p, t = pred.astype(np.float64) / 255.0, truth.astype(np.float64) / 255.0
    return {"psnr": psnr(p, t, hole), "ssim": ssim(p, t, hole)}


def classical_fill(name: str, gapped_path: Path, out_path: Path) -> np.ndarray:
    """A classical fill of the gapped scene (``gdal`` = GDAL FillNodata, ``harmonic`` = the
    model's prefill, as scored by the evaluation, :mod:`models.baselines`); writes a GeoTIFF,
    returns (3, H, W) uint8."""
    with rasterio.open(gapped_path) as src:
        data, profile = src.read(), src.profile
        hole = src.dataset_mask() == 0
    filled = np.rint(run_baseline(name, data / 255.0 * ~hole, hole) * 255).clip(1, 255).astype(np.uint8)
    filled = np.where(hole, filled, data)
    with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(filled)
    return filled


def write_summary_md(result: dict, path: Path) -> Path:
    """The demo's markdown summary (metrics table + output paths), written atomically."""
    m = result["metrics"]
    lines = [f"## Everest ({result['scene']}) + real Landsat 7 SLC-off gaps ({result['hole_fraction']:.1%} of pixels)",
             "", "Masked-region metrics (hole pixels only; truth known):", "",
             "| method | hole PSNR dB | hole SSIM |", "|---|---|---|",
             f"| edgefill ({result['model_name']}) | {m['model']['psnr']:.2f} | {m['model']['ssim']:.3f} |",
             f"| GDAL FillNodata | {m['gdal_fillnodata']['psnr']:.2f} | {m['gdal_fillnodata']['ssim']:.3f} |",
             f"| harmonic prefill (no network) | {m['harmonic']['psnr']:.2f} | {m['harmonic']['ssim']:.3f} |", ""]
    lines += [f"- {key}: `{result[key]}`" for key in ("gapped", "inpainted", "filled_mask", "quicklook",
                                                      "stac_item", "fillnodata")]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def demo_markdown(result: dict) -> str:
    """Markdown for the demo's artifact: ``summary.md`` and the quicklook picture."""
    from pipeline.pictures import picture_markdown

    return (Path(result["summary_md"]).read_text() + "\n"
            + picture_markdown(result["quicklook"], "quicklook: input | mask | output"))


def run_everest_demo(model: str | Path = "current", out_dir: str | Path = "demo_out/everest",
                     device: str = "cpu", bundle=None, quiet: bool = False,
                     pictures_dir: str | Path | None = None) -> dict:
    """Gap Everest with the real SLC-off pattern, inpaint it with ``model`` and with GDAL
    FillNodata, print masked-region PSNR/SSIM side by side; returns a small summary dict.
    ``pictures_dir``: also write the README's pictures there (:func:`write_readme_pictures`)."""
    from models.device import require_device
    from models.inpaint_scene import InpaintSceneConfig, inpaint_scene

    require_device(device)  # before the gapped scene is written
    out_dir = Path(out_dir)
    gapped = out_dir / "everest_slc_off_gapped.tif"
    truth, hole = write_gapped_everest(gapped)
    summary = inpaint_scene(InpaintSceneConfig(input=gapped, output=out_dir / "everest_inpainted.tif",
                                               model=str(model), device=device), bundle=bundle)
    with rasterio.open(summary.output) as src:
        model_fill = src.read()
    fill_path = out_dir / "everest_fillnodata.tif"
    gdal_fill = classical_fill("gdal", gapped, fill_path)
    harmonic_fill = classical_fill("harmonic", gapped, out_dir / "everest_harmonic.tif")
    metrics = {"model": masked_metrics(model_fill, truth, hole), "gdal_fillnodata": masked_metrics(gdal_fill, truth, hole),
               "harmonic": masked_metrics(harmonic_fill, truth, hole)}
    result = {
        "scene": EVEREST_ID, "hole_fraction": float(hole.mean()), "model_name": summary.model,
        "metrics": metrics, "gapped": str(gapped), "inpainted": str(summary.output),
        "filled_mask": str(summary.filled_mask), "quicklook": str(summary.quicklook),
        "stac_item": str(summary.stac_item), "fillnodata": str(fill_path), "seconds": summary.seconds,
    }
    result["summary_md"] = str(write_summary_md(result, out_dir / "summary.md"))
    if pictures_dir is not None:
        result["pictures"] = {k: str(v) for k, v in write_readme_pictures(result, pictures_dir).items()}
    if not quiet:
        print(f"Everest + real SLC-off gaps ({hole.mean():.1%} of pixels), masked-region metrics:")
        print(f"  {'method':<30}{'PSNR dB':>9}{'SSIM':>8}")
        for name, label in (("model", f"edgefill ({summary.model})"), ("gdal_fillnodata", "GDAL FillNodata"),
                            ("harmonic", "harmonic prefill")):
            print(f"  {label:<30}{metrics[name]['psnr']:>9.2f}{metrics[name]['ssim']:>8.3f}")
        for key in ("gapped", "inpainted", "filled_mask", "quicklook", "stac_item", "fillnodata"):
            print(f"  {key:<12} {result[key]}")
    return result


def _stretch(rgb: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(3, h, w) values -> (h, w, 3) uint8 with per-band limits ``lo``/``hi`` (shared by all panels)."""
    out = (rgb.astype(np.float32) - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None]
    return (np.clip(out, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def write_readme_pictures(result: dict, out_dir: str | Path, zoom: tuple[int, int, int] | None = None) -> dict[str, Path]:
    """The README's pictures of a finished demo (``result`` of :func:`run_everest_demo`):
    ``everest_demo.png`` (gapped input | holes | edgefill output, whole scene, half size) and
    ``everest_zoom.png`` (input | edgefill | GDAL FillNodata | truth on a ``zoom`` = (row, col, size)
    window, 3x nearest-neighbour). One 2-98 % stretch of the truth for every panel."""
    from PIL import Image

    out_dir = Path(out_dir)
    with rasterio.open(result["gapped"]) as g, rasterio.open(result["inpainted"]) as m, \
            rasterio.open(result["fillnodata"]) as f:
        gapped, model, gdal = g.read(), m.read(), f.read()
        hole = g.dataset_mask() == 0
    truth = read_scene(EVEREST_ID).rgb
    lo = np.percentile(truth.reshape(3, -1), 2, axis=1)
    hi = np.percentile(truth.reshape(3, -1), 98, axis=1)
    gap_rgb = np.where(hole[None], 0, gapped)
    sep = lambda h: np.full((h, 6, 3), 255, np.uint8)  # noqa: E731
    holes = np.repeat((hole * 255).astype(np.uint8)[..., None], 3, axis=2)
    overview = np.concatenate([_stretch(gap_rgb, lo, hi), sep(hole.shape[0]), holes, sep(hole.shape[0]),
                               _stretch(model, lo, hi)], axis=1)
    paths = {"overview": out_dir / "everest_demo.png", "zoom": out_dir / "everest_zoom.png"}
    img = Image.fromarray(overview)
    with atomic_path(paths["overview"]) as tmp:
        img.resize((img.width // 2, img.height // 2), Image.LANCZOS).save(tmp, format="PNG", optimize=True)
    # default: the truth's most textured 140 px window with < 5 % saturated snow (picked on texture, not scores)
    r, c, n = zoom or (480, 140, 140)
    crops = [_stretch(a[:, r:r + n, c:c + n], lo, hi) for a in (gap_rgb, model, gdal, truth)]
    panel = np.concatenate([x for crop in crops for x in (crop, sep(n))][:-1], axis=1)
    with atomic_path(paths["zoom"]) as tmp:
        Image.fromarray(panel).resize((panel.shape[1] * 3, n * 3), Image.NEAREST).save(tmp, format="PNG", optimize=True)
    return paths

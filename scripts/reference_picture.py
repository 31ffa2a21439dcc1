"""The README picture of reference filling: the real SLC-off Landsat 7 crop of 2017-03-16 (bundled
6a) filled from the Landsat 8 acquisition 8 days earlier, beside the single-image model.

    python scripts/reference_picture.py [--out docs/images/reference_marburg.png]

Panels (2x nearest-neighbour): L7 SLC-off input (gaps black) | L8 2017-03-08 reference |
``edgefill inpaint --reference`` | ``edgefill inpaint`` (single image). One common 2-98 % stretch.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.inpaint_scene import InpaintSceneConfig, inpaint_scene  # noqa: E402
from models.reference.pairs import MARBURG  # noqa: E402

TARGET = MARBURG / "LE07_L1TP_167055_20170316_B321.tif"
REFERENCE = MARBURG / "LC08_L1TP_167055_20170308_B432.tif"


def _panel(rgb: np.ndarray, lo: np.ndarray, hi: np.ndarray, black: np.ndarray | None = None) -> np.ndarray:
    out = np.clip((rgb.astype(np.float64) - lo[:, None, None]) / (hi - lo)[:, None, None] * 255, 0, 255)
    out = out.astype(np.uint8).transpose(1, 2, 0)
    if black is not None:
        out[black] = 0
    return np.repeat(np.repeat(out, 2, axis=0), 2, axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/reference_marburg.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for name, refs in (("reference", [REFERENCE]), ("single", [])):
            cfg = InpaintSceneConfig(input=TARGET, output=Path(tmp) / f"{name}.tif", references=refs)
            inpaint_scene(cfg)
            with rasterio.open(cfg.output) as src:
                outs[name] = src.read()
    with rasterio.open(TARGET) as src:
        target = src.read()
    with rasterio.open(REFERENCE) as src:
        reference = src.read()
    gaps = (target == 0).any(0)
    lo, hi = (np.percentile(target[:, ~gaps], q, axis=1) for q in (2, 98))
    r_lo, r_hi = (np.percentile(reference.reshape(3, -1), q, axis=1) for q in (2, 98))
    gap = np.full((202, 6, 3), 255, np.uint8)
    panels = [_panel(target, lo, hi, gaps), _panel(reference, r_lo, r_hi),
              _panel(outs["reference"], lo, hi), _panel(outs["single"], lo, hi)]
    row = np.concatenate([p if i == 0 else np.concatenate([gap, p], axis=1) for i, p in enumerate(panels)], axis=1)
    Image.fromarray(row).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

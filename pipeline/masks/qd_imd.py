"""QD-IMD (Quick Draw Irregular Mask Dataset) loader: a folder of PNGs -> (M, P, P) uint8, 1 = hole.

Polarity is normalised here, once: the original dataset's 512x512 PNGs are **black strokes (0)
on white** (hole = dark), the display crops shipped in ``data_catalog/masks/qd_imd/split``
(250x250, antialiased) are **white strokes on black** (hole = bright). ``polarity="auto"``
decides per folder from the fraction of bright pixels (>= ``threshold``): holes are the
minority in QD-IMD, so < 45 % bright means white = hole, > 55 % bright means black = hole,
anything between (or files disagreeing) is ambiguous -> :class:`MaskError`.

Resizing: the grayscale hole map (hole = 255) is resized to ``size`` with bilinear
interpolation (INTER_AREA when shrinking) and then thresholded at > 127 (hole where more than
half the interpolated neighbourhood is hole).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pipeline.masks import MaskError

Polarity = Literal["auto", "white_hole", "black_hole"]
#: 512 = the original dataset, 250 = the display crops shipped in data_catalog.
QD_IMD_SIZES = (250, 512)
DEFAULT_QD_IMD_DIR = Path(__file__).resolve().parents[2] / "data_catalog" / "masks" / "qd_imd" / "split"


def detect_polarity(gray: np.ndarray, threshold: int = 127) -> Literal["white_hole", "black_hole"]:
    """Which shade marks the holes of one grayscale mask (holes are the minority)."""
    bright = float((gray > threshold).mean())
    if bright < 0.45:
        return "white_hole"
    if bright > 0.55:
        return "black_hole"
    raise MaskError(f"ambiguous polarity: {bright:.0%} of pixels are bright (need < 45% or > 55%)")


def load_qd_imd_folder(folder: str | Path = DEFAULT_QD_IMD_DIR, size: int = 256, *,
                       polarity: Polarity = "auto", threshold: int = 127,
                       allowed_sizes: tuple[int, ...] = QD_IMD_SIZES) -> tuple[np.ndarray, str]:
    """Load every ``*.png`` in ``folder`` -> ((M, size, size) uint8 with 1 = hole, polarity used)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskError(f"QD-IMD folder {folder} does not exist")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise MaskError(f"QD-IMD folder {folder} holds no .png masks")
    grays = []
    for f in files:
        g = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        if g is None:
            raise MaskError(f"{f} is not a readable image")
        if g.shape[0] != g.shape[1] or g.shape[0] not in allowed_sizes:
            raise MaskError(f"{f}: size {g.shape[1]}x{g.shape[0]} is not a QD-IMD mask "
                            f"(expected square {' or '.join(map(str, allowed_sizes))} px)")
        grays.append(g)
    if polarity == "auto":
        found = {detect_polarity(g, threshold) for g in grays}
        if len(found) != 1:
            raise MaskError(f"masks in {folder} disagree on polarity ({sorted(found)}): mixed folders are ambiguous")
        polarity = found.pop()
    out = np.empty((len(grays), size, size), np.uint8)
    for i, g in enumerate(grays):
        hole = g if polarity == "white_hole" else 255 - g
        interp = cv2.INTER_AREA if g.shape[0] > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(hole, (size, size), interpolation=interp) > threshold
    return out, polarity

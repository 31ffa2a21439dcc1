"""Procedural free-form masks in QD-IMD's style: a few thick random-walk strokes with round
joints (cv2 polylines + circles), reproducible from a seed, with hole-ratio control.
Output (H, W) uint8, 1 = hole."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.masks import MaskError


def _stroke(canvas: np.ndarray, rng: np.random.Generator) -> None:
    size = canvas.shape[0]
    n_vertex = int(rng.integers(4, 13))
    width = int(rng.integers(size // 40 + 2, size // 10 + 3))
    x, y = rng.integers(0, size, 2)
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(n_vertex):
        angle += rng.uniform(-np.pi / 3, np.pi / 3)
        length = rng.uniform(size / 25, size / 5)
        nx = int(np.clip(x + length * np.cos(angle), 0, size - 1))
        ny = int(np.clip(y + length * np.sin(angle), 0, size - 1))
        cv2.line(canvas, (int(x), int(y)), (nx, ny), 1, width, lineType=cv2.LINE_8)
        cv2.circle(canvas, (nx, ny), width // 2, 1, -1)
        x, y = nx, ny


def irregular_mask(rng: np.random.Generator, size: int = 256, ratio: tuple[float, float] = (0.1, 0.6),
                   max_tries: int = 50) -> np.ndarray:
    """Strokes are added until the hole ratio reaches a target drawn uniformly in ``ratio``;
    a draw that overshoots ``ratio[1]`` is discarded and redrawn (at most ``max_tries`` times)."""
    lo, hi = ratio
    if not 0 <= lo < hi <= 1:
        raise MaskError(f"hole ratio range must satisfy 0 <= low < high <= 1, got {ratio}")
    for _ in range(max_tries):
        canvas = np.zeros((size, size), np.uint8)
        target = rng.uniform(lo, hi)
        while canvas.mean() < target:
            _stroke(canvas, rng)
            if canvas.mean() >= hi:
                break
        if lo <= canvas.mean() < hi:
            return canvas
    raise MaskError(f"could not draw an irregular mask with hole ratio in [{lo}, {hi}) in {max_tries} tries")

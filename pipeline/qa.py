"""Landsat quality-band decoding -> masks (True = missing).

Three bit layouts are supported (``kind``):

``c2_qa_pixel`` (Collection 2 QA_PIXEL, Landsat 4-9)
    bit 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 5 snow, 6 clear, 7 water;
    bits 8-9 cloud confidence, 10-11 shadow confidence, 12-13 snow, 14-15 cirrus confidence.
``c1_bqa`` (Collection 1 BQA, Landsat 4-8)
    bit 0 designated fill, 1 terrain occlusion / dropped pixel, 2-3 radiometric saturation,
    4 cloud, 5-6 cloud confidence, 7-8 cloud shadow confidence, 9-10 snow/ice confidence,
    11-12 cirrus confidence (Landsat 8 only).
``l8_pre_collection_bqa`` (Landsat 8 pre-Collection BQA)
    bit 0 designated fill, 1 dropped frame, 2 terrain occlusion, 4-5 water confidence,
    10-11 snow/ice confidence, 12-13 cirrus confidence, 14-15 cloud confidence. This layout has
    no cloud-shadow field: ``shadow=True`` adds nothing for it.

Two-bit confidences: 0 not determined, 1 low, 2 medium, 3 high; in the ``c1_bqa`` and
``l8_pre_collection_bqa`` layouts a pixel counts as cloud / shadow / cirrus / snow when its
confidence is >= ``min_confidence`` (default 3 = high). ``c2_qa_pixel`` uses its single-bit
flags (bits 1-5) instead, so ``min_confidence`` does not apply to it.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

QAKind = Literal["c2_qa_pixel", "c1_bqa", "l8_pre_collection_bqa"]
QA_KINDS: tuple[str, ...] = ("c2_qa_pixel", "c1_bqa", "l8_pre_collection_bqa")


def _bit(qa: np.ndarray, bit: int) -> np.ndarray:
    return ((qa >> bit) & 1).astype(bool)


def _pair(qa: np.ndarray, bit: int) -> np.ndarray:
    return ((qa >> bit) & 3).astype(np.uint8)


def decode_qa(qa: np.ndarray, kind: QAKind, *, min_confidence: int = 3) -> dict[str, np.ndarray]:
    """Decode a QA raster into boolean flags: ``fill``, ``cloud``, ``dilated_cloud`` (C2 only),
    ``shadow``, ``cirrus``, ``snow``.

    Flags a layout lacks are all False. ``qa`` must be an unsigned/signed integer array.
    """
    qa = np.asarray(qa)
    if not np.issubdtype(qa.dtype, np.integer):
        raise ValueError(f"QA band must be integer-typed, got {qa.dtype}")
    if kind not in QA_KINDS:
        raise ValueError(f"unknown QA kind {kind!r}; expected one of {QA_KINDS}")
    if not 1 <= min_confidence <= 3:
        raise ValueError(f"min_confidence must be 1..3, got {min_confidence}")
    qa = qa.astype(np.int64)
    if qa.size and qa.min() < 0:
        raise ValueError("QA band holds negative values: not a Landsat QA raster")
    none = np.zeros(qa.shape, bool)
    if kind == "c2_qa_pixel":
        return {"fill": _bit(qa, 0), "cloud": _bit(qa, 3), "dilated_cloud": _bit(qa, 1),
                "shadow": _bit(qa, 4), "cirrus": _bit(qa, 2), "snow": _bit(qa, 5)}
    if kind == "c1_bqa":
        return {"fill": _bit(qa, 0),
                "cloud": _bit(qa, 4) & (_pair(qa, 5) >= min_confidence), "dilated_cloud": none,
                "shadow": _pair(qa, 7) >= min_confidence,
                "cirrus": _pair(qa, 11) >= min_confidence,
                "snow": _pair(qa, 9) >= min_confidence}
    return {"fill": _bit(qa, 0), "cloud": _pair(qa, 14) >= min_confidence, "dilated_cloud": none,
            "shadow": none,
            "cirrus": _pair(qa, 12) >= min_confidence, "snow": _pair(qa, 10) >= min_confidence}


def qa_cloud_mask(qa: np.ndarray, kind: QAKind, *, shadow: bool = True, cirrus: bool = False,
                  fill: bool = True, dilated: bool = True, min_confidence: int = 3) -> np.ndarray:
    """QA raster -> bool mask, True = missing (cloud, plus shadow / cirrus / fill / C2's
    dilated-cloud ring as chosen)."""
    flags = decode_qa(qa, kind, min_confidence=min_confidence)
    mask = flags["cloud"].copy()
    if dilated:
        mask |= flags["dilated_cloud"]
    if shadow:
        mask |= flags["shadow"]
    if cirrus:
        mask |= flags["cirrus"]
    if fill:
        mask |= flags["fill"]
    return mask

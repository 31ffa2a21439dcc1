"""Build the mask library (every kind, per ratio bin) and write it into the store.

Store arrays: ``masks`` (M, P, P) uint8 (1 = missing, chunk = 1 mask), ``masks_kind`` (M,) str,
``masks_ratio`` (M,) float32 (hole fraction), ``masks_split`` (M,) str (train / validation / test).
A kind spec's ``count`` is shared among the splits by ``split_fractions``; within a split, a
spec with ``bins`` splits its share evenly over those bins (remainder to the first bins) and
every bin must be filled, else :class:`MaskError` names the kind, split and bin.

**Split.** No mask serves both training and evaluation: procedural kinds (``irregular``,
``slc_off``) draw each split from its own random stream; kinds cropped from real rasters
(``slc_off_real``, ``cloud``, ``nodata``, and the ``qd_imd`` files) give each source raster
to ONE side (:func:`assign_sources`: whole rasters, the richest first - most crop windows in the
kind's bins - to the side furthest below its share); the evaluation side's rasters are divided between validation and test
the same way, and when it holds a single raster both crop it (validation and test may share a
source, training never shares one with them). ``qd_imd`` has no bins: its real masks keep their
natural ratios (the shipped six: 8-29 %). The SLC-off generator cannot exceed ~40 % holes
(gap width <= 12.6 px per 32.5 px period), so its default bins stop at 40 %.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from pydantic import BaseModel, Field

from pipeline.atomic_io import atomic_dir
from pipeline.masks import RATIO_BINS, MaskError, hole_ratio
from pipeline.masks.from_rasters import (crops_in_range, real_cloud_masks, real_gap_masks, real_nodata_masks,
                                         window_ratios)
from pipeline.masks.irregular import irregular_mask
from pipeline.masks.qd_imd import DEFAULT_QD_IMD_DIR, load_qd_imd_folder
from pipeline.masks.slc_off import SlcOffParams, slc_off_mask
from pipeline.store import dimension_names, read_meta

MaskKind = Literal["qd_imd", "irregular", "slc_off", "slc_off_real", "cloud", "nodata"]
MASK_KINDS: tuple[str, ...] = ("qd_imd", "irregular", "slc_off", "slc_off_real", "cloud", "nodata")
Bin = tuple[float, float]


SPLIT_NAMES = ("train", "validation", "test")


def _default_fractions() -> dict[str, float]:
    return {"train": 0.6, "validation": 0.2, "test": 0.2}


class MaskKindSpec(BaseModel):
    kind: MaskKind
    count: int = Field(ge=0, description="masks of this kind (qd_imd: ignored, all files are used)")
    bins: list[Bin] | None = Field(default_factory=lambda: list(RATIO_BINS))


def _default_kinds() -> list[MaskKindSpec]:
    return [MaskKindSpec(kind="qd_imd", count=0, bins=None),
            MaskKindSpec(kind="irregular", count=500),
            MaskKindSpec(kind="slc_off", count=300, bins=list(RATIO_BINS[:3])),
            MaskKindSpec(kind="slc_off_real", count=150),
            MaskKindSpec(kind="cloud", count=150),
            MaskKindSpec(kind="nodata", count=100, bins=list(RATIO_BINS[:4]))]


class MaskLibraryConfig(BaseModel):
    """How many masks of each kind; ``seed`` makes the library reproducible."""

    size: int = Field(256, ge=16)
    seed: int = 0
    kinds: list[MaskKindSpec] = Field(default_factory=_default_kinds)
    split_fractions: dict[str, float] = Field(default_factory=_default_fractions,
                                              description="share of each kind's count per split (train/validation/test)")
    qd_imd_dir: str | None = Field(None, description="folder of QD-IMD PNGs (None: the 6 shipped)")
    slc_off: SlcOffParams = SlcOffParams()


@dataclass
class MaskLibrary:
    masks: np.ndarray  # (M, P, P) uint8, 1 = missing
    kinds: np.ndarray  # (M,) str
    ratios: np.ndarray  # (M,) float32
    splits: np.ndarray  # (M,) str: train / validation / test


def _split_counts(count: int, n_bins: int) -> list[int]:
    base, extra = divmod(count, n_bins)
    return [base + (i < extra) for i in range(n_bins)]


def _slc_off_in_bin(rng: np.random.Generator, size: int, params: SlcOffParams, lo: float, hi: float,
                    max_tries: int = 200) -> np.ndarray:
    reach = (params.edge_width_px * (1 + size / 2 / params.half_swath_px)) / (params.period_px - params.period_jitter)
    if lo >= reach:
        raise MaskError(f"slc_off masks cannot reach the {lo:.0%}-{hi:.0%} bin (at most ~{reach:.0%} "
                        f"holes with gaps <= {params.edge_width_px} px per {params.period_px} px period)")
    for _ in range(max_tries):
        s = rng.uniform(lo, hi) * params.period_px / params.edge_width_px * rng.choice([-1.0, 1.0])
        m = slc_off_mask(rng, size, params, swath_pos=float(np.clip(s, -1, 1)))
        if lo <= m.mean() < hi:
            return m
    raise MaskError(f"could not draw an slc_off mask in the {lo:.0%}-{hi:.0%} bin in {max_tries} tries")


def assign_sources(areas: list[int], fractions: dict[str, float]) -> dict[str, list[int]]:
    """Source indices per split, whole sources only (see the module docstring).

    ``areas``: the weight of each source (for real rasters: their usable crop windows). Largest first, each source goes to the side (train or
    evaluation) furthest below its share; evaluation sources are then divided the same way
    between validation and test, and a lone evaluation source serves both."""
    def greedy(idx: list[int], shares: dict[str, float]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {k: [] for k in shares}
        total = float(sum(areas[i] for i in idx)) or 1.0
        got = {k: 0.0 for k in shares}
        for i in sorted(idx, key=lambda j: (-areas[j], j)):
            k = max(shares, key=lambda s: (shares[s] * total - got[s], -list(shares).index(s)))
            out[k].append(i)
            got[k] += areas[i]
        return out

    f = {k: float(fractions.get(k, 0.0)) for k in SPLIT_NAMES}
    eval_share = f["validation"] + f["test"]
    if eval_share <= 0:
        return {"train": list(range(len(areas))), "validation": [], "test": []}
    if len(areas) == 1:
        raise MaskError("one source raster cannot serve both training and evaluation")
    sides = greedy(list(range(len(areas))), {"train": f["train"], "eval": eval_share})
    ev = sides["eval"]
    if len(ev) == 1 or f["validation"] == 0 or f["test"] == 0:
        return {"train": sides["train"], "validation": ev if f["validation"] else [], "test": ev if f["test"] else []}
    return {"train": sides["train"], **greedy(ev, {"validation": f["validation"], "test": f["test"]})}


def _usable_windows(source: np.ndarray, size: int, bins: list[Bin]) -> int:
    """How many ``size`` windows (8 px grid) of a real raster fall in one of ``bins``."""
    q = window_ratios(source, size)[2]
    return int(sum(((q >= lo) & (q < hi)).sum() for lo, hi in bins))


def _has_window(sources: list[np.ndarray], size: int, ratio_bin: Bin) -> bool:
    return any(((q >= ratio_bin[0]) & (q < ratio_bin[1])).any() for q in (window_ratios(m, size)[2] for m in sources))


def _split_counts_by_fraction(count: int, fractions: dict[str, float]) -> dict[str, int]:
    total = sum(fractions.get(k, 0.0) for k in SPLIT_NAMES) or 1.0
    out = {k: int(round(count * fractions.get(k, 0.0) / total)) for k in SPLIT_NAMES}
    out["train"] += count - sum(out.values())
    return out


def _kind_masks(spec: MaskKindSpec, config: MaskLibraryConfig, rng: np.random.Generator,
                sources: dict[str, list[np.ndarray]], split: str, n_total: int) -> np.ndarray:
    """``n_total`` masks of ``spec.kind`` for ``split`` (real kinds crop only that split's sources)."""
    size = config.size
    if spec.kind == "qd_imd":
        masks, _ = load_qd_imd_folder(config.qd_imd_dir or DEFAULT_QD_IMD_DIR, size)
        picked = assign_sources([int(m.size) for m in masks], config.split_fractions)[split]
        return masks[sorted(picked)]
    bins = spec.bins or [(0.0, 1.0)]
    parts = []
    if spec.kind not in ("irregular", "slc_off") and spec.kind not in sources:
        loader = {"slc_off_real": real_gap_masks, "cloud": real_cloud_masks, "nodata": real_nodata_masks}
        sources[spec.kind] = loader[spec.kind]()
    if spec.kind in sources:  # real rasters: this split's sources; bins they cannot fill are skipped
        pool = sources[spec.kind]
        usable = [_usable_windows(m, size, bins) for m in pool]
        mine = [pool[i] for i in assign_sources(usable, config.split_fractions)[split]]
        fillable = [b for b in bins if _has_window(mine, size, b)]
        if not fillable:
            raise MaskError(f"no {size}px window of the real {spec.kind} masks for {split} falls in any bin {bins}")
        bins = fillable
    for (lo, hi), n in zip(bins, _split_counts(n_total, len(bins))):
        if spec.kind == "irregular":
            parts += [irregular_mask(rng, size, (lo, hi))[None] for _ in range(n)]
        elif spec.kind == "slc_off":
            parts += [_slc_off_in_bin(rng, size, config.slc_off, lo, hi)[None] for _ in range(n)]
        else:
            # real scan gaps keep their orientation (north-up tilt of a descending orbit)
            parts.append(crops_in_range(mine, n, size, (lo, hi), rng, kind=f"{spec.kind} ({split})",
                                        augment=spec.kind != "slc_off_real"))
    return np.concatenate(parts) if parts else np.empty((0, size, size), np.uint8)


def build_mask_library(config: MaskLibraryConfig = MaskLibraryConfig()) -> MaskLibrary:
    """Every kind in ``config.kinds``, for every split -> one library (deterministic for a config)."""
    masks, kinds, splits = [], [], []
    sources: dict[str, list[np.ndarray]] = {}
    for i, spec in enumerate(config.kinds):
        counts = _split_counts_by_fraction(spec.count, config.split_fractions)
        for j, split in enumerate(SPLIT_NAMES):
            if spec.kind != "qd_imd" and counts[split] == 0:
                continue
            rng = np.random.default_rng([config.seed, i, MASK_KINDS.index(spec.kind), j])
            m = _kind_masks(spec, config, rng, sources, split, counts[split])
            masks.append(m.astype(np.uint8))
            kinds += [spec.kind] * len(m)
            splits += [split] * len(m)
    if not kinds:
        raise MaskError("the mask library config asks for no masks")
    stack = np.concatenate(masks)
    return MaskLibrary(masks=stack, kinds=np.asarray(kinds, dtype=str), ratios=hole_ratio(stack),
                       splits=np.asarray(splits, dtype=str))


def replace_arrays(group: zarr.Group, arrays: dict[str, np.ndarray], chunks: dict[str, tuple] | None = None) -> None:
    """Write ``arrays`` (store array names: ``masks``, ``pairings/test`` ...) into a LOCAL store's group
    without a half-written state: each is written as a hidden temporary array beside its final
    place (:func:`pipeline.atomic_io.atomic_dir`), and all are renamed into place once all are written."""
    root = Path(str(group.store.root)) / group.path if group.path else Path(str(group.store.root))
    with contextlib.ExitStack() as stack:
        for name, value in arrays.items():
            parent = Path(name).parent.as_posix()
            if parent != ".":
                group.require_group(parent)
            tmp = stack.enter_context(atomic_dir(root / name, replace=True)).relative_to(root).as_posix()
            text = value.dtype.kind == "U"
            group.create_array(tmp, shape=value.shape, dtype=str if text else value.dtype,
                               chunks=(chunks or {}).get(name) or value.shape, fill_value=None if text else 0,
                               dimension_names=dimension_names(name))
            group[tmp][...] = value


def write_mask_library(group: zarr.Group, lib: MaskLibrary) -> None:
    """Write ``masks``, ``masks_kind``, ``masks_ratio``, ``masks_split`` (checks size against the store's patches)."""
    p = read_meta(group).patch_size
    if lib.masks.ndim != 3 or lib.masks.shape[1:] != (p, p):
        raise MaskError(f"mask library shape {lib.masks.shape} does not match the store's {p}x{p} patches")
    if not np.isin(lib.masks, (0, 1)).all():
        raise MaskError("masks must hold only 0 and 1 (1 = missing)")
    replace_arrays(group, {"masks": lib.masks, "masks_kind": lib.kinds, "masks_ratio": lib.ratios,
                           "masks_split": lib.splits}, chunks={"masks": (1, p, p)})

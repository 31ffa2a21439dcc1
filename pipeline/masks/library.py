"""Build the mask library (every kind, per ratio bin) and write it into the store.

Store arrays: ``masks`` (M, P, P) uint8 (1 = missing, chunk = 1 mask), ``masks_kind`` (M,) str,
``masks_ratio`` (M,) float32 (hole fraction). A kind spec with ``bins`` splits its ``count``
evenly over those bins (remainder to the first bins) and every bin must be filled, else
:class:`MaskError` names the kind and bin. ``qd_imd`` has no bins: its real masks keep their
natural ratios (the shipped six: 8-29 %). The SLC-off generator cannot exceed ~40 % holes
(gap width <= 12.6 px per 32.5 px period), so its default bins stop at 40 %.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from pydantic import BaseModel, Field

from pipeline.masks import RATIO_BINS, MaskError, hole_ratio
from pipeline.masks.from_rasters import crops_in_range, real_cloud_masks, real_gap_masks, real_nodata_masks
from pipeline.masks.irregular import irregular_mask
from pipeline.masks.qd_imd import DEFAULT_QD_IMD_DIR, load_qd_imd_folder
from pipeline.masks.slc_off import SlcOffParams, slc_off_mask

MaskKind = Literal["qd_imd", "irregular", "slc_off", "slc_off_real", "cloud", "nodata"]
MASK_KINDS: tuple[str, ...] = ("qd_imd", "irregular", "slc_off", "slc_off_real", "cloud", "nodata")
Bin = tuple[float, float]


class MaskKindSpec(BaseModel):
    kind: MaskKind
    count: int = Field(ge=0, description="masks of this kind (qd_imd: ignored, all files are used)")
    bins: list[Bin] | None = Field(default_factory=lambda: list(RATIO_BINS))


def _default_kinds() -> list[MaskKindSpec]:
    return [MaskKindSpec(kind="qd_imd", count=0, bins=None),
            MaskKindSpec(kind="irregular", count=200),
            MaskKindSpec(kind="slc_off", count=120, bins=list(RATIO_BINS[:3])),
            MaskKindSpec(kind="slc_off_real", count=50),
            MaskKindSpec(kind="cloud", count=50),
            MaskKindSpec(kind="nodata", count=40, bins=list(RATIO_BINS[:4]))]


class MaskLibraryConfig(BaseModel):
    """How many masks of each kind; ``seed`` makes the library reproducible."""

    size: int = Field(256, ge=16)
    seed: int = 0
    kinds: list[MaskKindSpec] = Field(default_factory=_default_kinds)
    qd_imd_dir: str | None = Field(None, description="folder of QD-IMD PNGs (None: the 6 shipped)")
    slc_off: SlcOffParams = SlcOffParams()


@dataclass
class MaskLibrary:
    masks: np.ndarray  # (M, P, P) uint8, 1 = missing
    kinds: np.ndarray  # (M,) str
    ratios: np.ndarray  # (M,) float32


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


def _kind_masks(spec: MaskKindSpec, config: MaskLibraryConfig, rng: np.random.Generator,
                sources: dict[str, list[np.ndarray]]) -> np.ndarray:
    size = config.size
    if spec.kind == "qd_imd":
        masks, _ = load_qd_imd_folder(config.qd_imd_dir or DEFAULT_QD_IMD_DIR, size)
        return masks
    bins = spec.bins or [(0.0, 1.0)]
    parts = []
    for (lo, hi), n in zip(bins, _split_counts(spec.count, len(bins))):
        if spec.kind == "irregular":
            parts += [irregular_mask(rng, size, (lo, hi))[None] for _ in range(n)]
        elif spec.kind == "slc_off":
            parts += [_slc_off_in_bin(rng, size, config.slc_off, lo, hi)[None] for _ in range(n)]
        else:
            if spec.kind not in sources:
                loader = {"slc_off_real": real_gap_masks, "cloud": real_cloud_masks, "nodata": real_nodata_masks}
                sources[spec.kind] = loader[spec.kind]()
            # real scan gaps keep their orientation (north-up tilt of a descending orbit)
            parts.append(crops_in_range(sources[spec.kind], n, size, (lo, hi), rng, kind=spec.kind,
                                        augment=spec.kind != "slc_off_real"))
    return np.concatenate(parts) if parts else np.empty((0, size, size), np.uint8)


def build_mask_library(config: MaskLibraryConfig = MaskLibraryConfig()) -> MaskLibrary:
    """Every kind in ``config.kinds`` -> one library (deterministic for a given config)."""
    masks, kinds = [], []
    sources: dict[str, list[np.ndarray]] = {}
    for i, spec in enumerate(config.kinds):
        rng = np.random.default_rng([config.seed, i, MASK_KINDS.index(spec.kind)])
        m = _kind_masks(spec, config, rng, sources)
        masks.append(m.astype(np.uint8))
        kinds += [spec.kind] * len(m)
    if not kinds:
        raise MaskError("the mask library config asks for no masks")
    stack = np.concatenate(masks)
    return MaskLibrary(masks=stack, kinds=np.asarray(kinds, dtype=str), ratios=hole_ratio(stack))


def replace_arrays(group: zarr.Group, arrays: dict[str, np.ndarray], chunks: dict[str, tuple] | None = None) -> None:
    """Write ``arrays`` into a LOCAL store's group without a half-written state: each is written
    to a hidden temporary array first, then the directories are swapped by rename."""
    root = Path(str(group.store.root)) / group.path if group.path else Path(str(group.store.root))
    for stale in list(root.glob(".tmp-*")) + list(root.glob(".trash-*")):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp_names = {}
    for name, value in arrays.items():
        tmp = f".tmp-{name.replace('/', '_')}-{uuid.uuid4().hex[:8]}"
        ch = (chunks or {}).get(name) or value.shape
        group.create_array(tmp, shape=value.shape, dtype=value.dtype if value.dtype.kind != "U" else str,
                           chunks=ch, fill_value=None if value.dtype.kind == "U" else 0)
        group[tmp][...] = value
        tmp_names[name] = tmp
    for name, tmp in tmp_names.items():
        final = root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.parent != root and not (final.parent / "zarr.json").exists():
            zarr.open_group(str(root), mode="r+").require_group(str(Path(name).parent))
        trash = None
        if final.exists():
            trash = root / f".trash-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
        os.replace(root / tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def write_mask_library(group: zarr.Group, lib: MaskLibrary) -> None:
    """Write ``masks``, ``masks_kind``, ``masks_ratio`` (checks size against the store's patches)."""
    p = int(group.attrs.get("patch_size", lib.masks.shape[-1]))
    if lib.masks.ndim != 3 or lib.masks.shape[1:] != (p, p):
        raise MaskError(f"mask library shape {lib.masks.shape} does not match the store's {p}x{p} patches")
    if not np.isin(lib.masks, (0, 1)).all():
        raise MaskError("masks must hold only 0 and 1 (1 = missing)")
    replace_arrays(group, {"masks": lib.masks, "masks_kind": lib.kinds, "masks_ratio": lib.ratios},
                   chunks={"masks": (1, p, p)})

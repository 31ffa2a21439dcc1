"""Inpaint one GeoTIFF scene: read -> mask -> tiled G1/G2 inference -> COG + filled mask +
quicklook PNG + STAC item. The plain function behind ``edgefill inpaint`` and the
``inpaint-scene`` flow.

Outputs (``OUT`` = the output path; all written to a temp dir beside it, then renamed):

- ``OUT`` (.tif): Cloud-Optimized GeoTIFF with EVERY band of the input, in the input's order,
  with its CRS, transform, nodata, dtype, band descriptions, scale/offset, units, colour
  interpretation and tags; DEFLATE, internal overviews; an internal mask when the input has one
  (valid = the input's valid pixels + the filled ones). Non-hole pixels are bit-for-bit the
  input's; the scene's own invalid pixels that are not holes (e.g. edge fill with ``--slc-off``)
  keep the nodata value (or stay masked); a filled pixel never equals the nodata value, nor 0
  under the Landsat DN-0 convention (:func:`avoid_nodata`).
- Bands: the model fills the three bands chosen by ``bands`` (R, G, B). The other bands
  (``other_bands``): ``"fill"`` (default) fills their holes with GDAL FillNodata (inverse
  distance, :data:`OTHER_FILL_DISTANCE` px search radius, no smoothing; a harmonic fill,
  :func:`models.networks.smooth_fill`, beyond that radius), reading :data:`OTHER_FILL_DISTANCE`
  rows above and below each strip; ``"keep"`` copies them unchanged (holes stay nodata). A
  band's holes: the model's holes plus its own invalid pixels where the model bands are valid.
  An alpha band becomes opaque (the dtype's maximum) where pixels were filled.
- ``OUT.filled_mask.tif``: uint8 COG on the same grid, 1 = hole filled (model bands by the
  model, other bands as above), 2 = only another band's own nodata filled (model bands kept),
  0 = input kept.
- ``OUT.quicklook.png``: before | hole mask | after, at most ``quicklook_px`` px high.
- ``OUT.stac.json``: a STAC item (projection extension fields, the three assets, model name,
  radiometry, fill statistics).

Holes: the scene's own invalid pixels follow :func:`pipeline.raster_io.describe_invalid`
(nodata value, NaN, internal/alpha mask, or DN 0 by the Landsat convention when the file has
no nodata value, ``zero_is_nodata``); which rule applied is in the summary, the STAC item and a
note (stderr on the CLI). A nodata value inside the data range is honoured (pixels equal to it
are holes, as GDAL reads the tag) with a note saying so.

Radiometry (:func:`scene_radiometry`): input of the model's stored dtype uses the model's
normalisation (``bundle.radiometry``); a model working in physical units (uint16 / float32
radiometry: reflectance) follows the scene's scale/offset tags when the selected bands carry
them; any other case (e.g. uint16 DN for a uint8 model) is stretched per scene like
:mod:`pipeline.scenes` does (valid-pixel percentiles 0.5 / 99.5 -> 1/255 .. 1). The rule used
is recorded in the summary and the STAC item; outputs are converted back with the same linear
map and written in the input's dtype, with its scale/offset tags.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rasterio.windows import Window

from models.inference import FillFn, InferenceStats, TilingConfig, avoid_nodata, composite, inpaint_strips, model_fill_fn
from pipeline.atomic_io import AtomicFiles
from pipeline.edges import EdgeParams
from models.reference.scene import (CHANNELS_PER_REFERENCE, DEFAULT_REFERENCE_METHOD, METHOD_DESCRIPTIONS,
                                    ReferenceCounts, ReferenceMethod, reference_fill_fn)
from pipeline.raster_io import (RasterInputError, SceneInfo, copy_metadata, describe_invalid,
                                gdal_env, inspect_scene, nodata_from_values, nodata_mask, output_profile,
                                read_bands, read_decimated, to_cog)
from pipeline.references import ReferenceReader, acquisition_date, open_reference, order_by_date
from pipeline.scene_masks import MaskSource, SceneMasker
from pipeline.store import Radiometry

#: px: GDAL FillNodata's search radius for the other bands, and the rows read around each strip.
OTHER_FILL_DISTANCE = 100
OtherBands = Literal["fill", "keep"]
OTHER_BANDS_HANDLING = {
    "fill": (f"fill: GDAL FillNodata (inverse distance, up to {OTHER_FILL_DISTANCE} px, no smoothing), "
             f"harmonic fill beyond"),
    "keep": "keep: copied unchanged (their holes stay nodata)",
}


class InpaintError(ValueError):
    """The scene cannot be inpainted as asked (bad paths, unknown model, nothing valid, ...)."""


class InpaintSettings(BaseModel):
    """How scenes are inpainted (every field but the paths): shared by :class:`InpaintSceneConfig`
    (one scene) and :class:`InpaintScenesConfig` (many)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field("current", description="run dir or registry name")
    mask: MaskSource = MaskSource()
    bands: tuple[int, ...] | None = Field(None, description="1-based band indices (R, G, B) the model fills; "
                                          "default 1,2,3")
    device: str = Field("cpu", description="cpu | cuda")
    overlap: int = Field(32, ge=0, description="px shared by neighbouring tiles (blended)")
    batch_size: int | None = Field(None, ge=1, description="tiles per model call; default 4 on CPU, 32 on CUDA")
    tile: int | None = Field(None, description="tile px; default the model's patch size")
    quicklook_px: int = Field(512, ge=32)
    zero_is_nodata: bool = Field(True, description="no nodata value and no mask: take DN 0 as fill (Landsat "
                                 "convention)")
    other_bands: OtherBands = Field("fill", description="bands not in bands: 'fill' (GDAL FillNodata) or 'keep' "
                                    "(holes stay nodata)")
    references: list[Path] = Field(default_factory=list, description="reference acquisitions (other dates of the "
                                   "same place, any grid/CRS/sensor): each hole pixel is filled from the nearest-"
                                   "date reference valid there, by reference_fill; the model where none is")
    reference_bands: tuple[int, ...] | None = Field(None, description="1-based bands of each reference taken as "
                                                    "the target's R, G, B; default the target's bands")
    reference_fill: ReferenceMethod = Field(DEFAULT_REFERENCE_METHOD, description="how a reference fills: "
                                            "local_regression | reference_harmonic | similar_pixels | adaptive")


class InpaintSceneConfig(InpaintSettings):
    """One scene's inpainting job: the one declaration of the inpaint stage's parameters and defaults
    (``edgefill inpaint``: ``--config FILE.yaml``, ``--set key=value``, generated flags; the
    ``inpaint-scene`` flow's ``config`` parameter). ``output`` defaults to
    ``<input folder>/<input stem>_inpainted.tif`` (:func:`default_output`)."""

    input: Path = Field(description="input GeoTIFF scene")
    output: Path = Field(description="output Cloud-Optimized GeoTIFF (.tif; sidecars beside it); "
                         "default <input stem>_inpainted.tif beside the input")

    @model_validator(mode="before")
    @classmethod
    def _default_output(cls, data):
        if isinstance(data, dict) and data.get("output") is None and data.get("input") is not None:
            data = {**data, "output": default_output(data["input"])}
        return data


class InpaintScenesConfig(InpaintSettings):
    """Many scenes (the ``inpaint-scenes`` flow): each ``inputs`` file into
    ``output_dir/<stem>_inpainted.tif`` with the same settings; ``deployment`` (e.g.
    ``inpaint-scene/default``) submits each scene to that served deployment instead of a subflow."""

    inputs: list[Path] = Field(description="input GeoTIFF scenes")
    output_dir: Path = Field(description="folder of the outputs")
    deployment: str | None = Field(None, description="FLOW/DEPLOYMENT to submit each scene to (default: subflows)")

    def jobs(self) -> list[InpaintSceneConfig]:
        settings = self.model_dump(include=set(InpaintSettings.model_fields))
        return [InpaintSceneConfig(**settings, input=p, output=default_output(p, self.output_dir))
                for p in self.inputs]


class InpaintSummary(BaseModel):
    """Small, JSON-able result (paths and counts; never arrays)."""

    output: Path
    filled_mask: Path
    quicklook: Path
    stac_item: Path
    model: str
    width: int
    height: int
    filled_pixels: int
    filled_fraction: float
    tiles_total: int
    tiles_run: int
    skipped_fraction: float
    seconds: float
    radiometry: dict
    bands: list[int] = Field(description="every band of the output (all the input's, same order)")
    model_bands: list[int] = Field(description="bands filled by the model (R, G, B)")
    other_bands: list[int] = Field(description="bands not filled by the model (alpha excluded)")
    other_bands_handling: str
    other_bands_filled: dict[int, int] = Field(description="band -> pixels filled by the classical fill")
    other_bands_unfilled: int = Field(0, description="other-band hole pixels left as nodata (no data near)")
    alpha_band: int | None = None
    mask_source: str
    nodata_rule: str = Field(description="which pixels were the scene's own invalid (nodata) pixels")
    zero_is_nodata: bool = Field(description="True when DN 0 was taken as fill (Landsat convention)")
    invalid_pixels: int = Field(description="the scene's own invalid pixels (judged on the model bands)")
    notes: list[str] = Field(default_factory=list, description="warnings also printed to stderr by the CLI")
    reference_fill: str | None = Field(None, description="how the references filled (None: no reference given)")
    references: list[dict] = Field(default_factory=list, description="per reference, nearest date first: file, "
                                   "acquired, valid fraction over the target, share of the filled pixels")
    single_image_share: float = Field(1.0, description="share of the filled pixels filled by the single-image model")


def default_output(input_path: str | Path, output_dir: str | Path | None = None) -> Path:
    """``<output_dir or the input's folder>/<input stem>_inpainted.tif``."""
    input_path = Path(input_path)
    folder = input_path.parent if output_dir is None else Path(output_dir)
    return folder / f"{input_path.stem}_inpainted.tif"


def output_paths(output: Path) -> dict[str, Path]:
    output = Path(output)
    stem = output.with_suffix("")
    return {"output": output, "filled_mask": Path(f"{stem}.filled_mask.tif"),
            "quicklook": Path(f"{stem}.quicklook.png"), "stac_item": Path(f"{stem}.stac.json")}


def _check_paths(input_path: Path, output: Path) -> dict[str, Path]:
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise InpaintError(f"output {output} must end in .tif (a Cloud-Optimized GeoTIFF is written)")
    paths = output_paths(output)
    src = input_path.resolve()
    for role, p in paths.items():
        if p.resolve() == src:
            raise InpaintError(f"{role} path {p} is the input scene: refusing to overwrite the input; "
                               f"choose another output path")
    return paths


def _valid_sample(info: SceneInfo, src) -> np.ndarray:
    """(3, n) valid values of the selected bands, every step-th pixel (~1024 px a side)."""
    step = max(1, max(info.width, info.height) // 1024)
    sample = read_decimated(src, list(info.bands), step)
    invalid = nodata_from_values(sample, info.nodata, info.zero_is_nodata)
    if info.has_internal_mask and info.nodata is None:
        invalid |= read_decimated(src, info.bands[0], step, masks=True) == 0
    return sample[:, ~invalid]


def scene_radiometry(info: SceneInfo, model_radiometry: Radiometry, src,
                     sample: Callable[[], np.ndarray] | None = None) -> Radiometry:
    """How the scene's stored values become the model's [0, 1]:

    - a model in physical units (uint16 / float32 radiometry: reflectance) and bands with
      scale/offset tags: the tags (``value * scale + offset``);
    - the model's stored dtype: the model's normalisation;
    - else a per-scene percentile stretch (:meth:`Radiometry.stretch`; linear, so it is the same
      map whether taken on the stored values or on the tagged physical values)."""
    tags = info.scale_offset
    if tags is not None and model_radiometry.dtype != "uint8":
        scale, offset = tags
        return Radiometry(dtype=info.dtype, scale=scale, offset=offset,
                          description=f"the scene's scale/offset tags: value x {scale:g} + {offset:g} "
                                      f"(physical units, as the model's '{model_radiometry.description}')")
    if info.dtype == model_radiometry.dtype:
        return model_radiometry
    sample = sample() if sample is not None else _valid_sample(info, src)
    if not sample.size:
        raise InpaintError(f"{info.path}: no valid pixel found to derive a radiometric stretch")
    rad = Radiometry.stretch(sample, info.dtype)
    if tags is not None:
        rad = rad.model_copy(update={"description": rad.description + f" (scale/offset tags {tags[0]:g}/"
                                                    f"{tags[1]:g} kept on the output)"})
    return rad


def _nodata_in_range(info: SceneInfo, sample: Callable[[], np.ndarray]) -> tuple[float, float] | None:
    """(min, max) of the valid values when the nodata value lies strictly inside them, else None."""
    if info.nodata is None or not np.isfinite(info.nodata):
        return None
    sample = sample()
    if not sample.size:
        return None
    lo, hi = float(sample.min()), float(sample.max())
    return (lo, hi) if lo < info.nodata < hi else None


def _require_some_valid(info: SceneInfo, src) -> None:
    """Raise unless the scene has at least one valid pixel (stops at the first block that has one)."""
    block = 512
    for r in range(0, info.height, block):
        win = Window(0, r, info.width, min(block, info.height - r))
        if not nodata_mask(src, info, read_bands(src, info, win), win).all():
            return
    raise InpaintError(f"{info.path} holds no valid pixel (every pixel is nodata/fill): nothing to inpaint from")


def _load_bundle(model, device: str):
    from models.checkpoint import CheckpointError
    from models.registry import load_model

    try:
        return load_model(model, device=device)
    except KeyError as exc:
        raise InpaintError(str(exc.args[0]) if exc.args else str(exc)) from exc
    except CheckpointError as exc:
        raise InpaintError(f"cannot load model {model!r}: {exc}") from exc


def _open_references(cfg: InpaintSettings, info: SceneInfo, src, radiometry: Radiometry) -> list[ReferenceReader]:
    """The references of ``cfg`` opened on the target grid, nearest date first (none: [])."""
    if not cfg.references:
        return []

    def target_sample(step: int) -> tuple[np.ndarray, np.ndarray]:
        values = read_decimated(src, list(info.bands), step)
        return radiometry.to_unit(values), ~nodata_from_values(values, info.nodata, info.zero_fill)

    readers: list[ReferenceReader] = []
    try:
        for path in cfg.references:
            readers.append(open_reference(path, info, target_sample, cfg.reference_bands))
    except BaseException:
        for r in readers:
            r.close()
        raise
    with rasterio.open(info.path) as tsrc:
        target_date = acquisition_date(info.path, tsrc.tags())
    return order_by_date(readers, target_date)


def _reference_summary(cfg: InpaintSettings, readers: list[ReferenceReader], counts: "StreamCounts") -> dict:
    if not readers:
        return {}
    total = max(counts.filled, 1)
    refs = [{"file": r.name, "acquired": r.acquired.isoformat() if r.acquired else None,
             "valid_fraction": round(r.valid_fraction, 4), "filled_pixels": n, "share": n / total}
            for r, n in zip(readers, counts.reference_filled)]
    filled_by_refs = sum(counts.reference_filled)
    return {"reference_fill": f"{cfg.reference_fill}: {METHOD_DESCRIPTIONS[cfg.reference_fill]}",
            "references": refs, "single_image_share": (counts.filled - filled_by_refs) / total}


@dataclass
class StreamCounts:
    """Pixel counts of one streamed scene."""

    filled: int = 0
    reference_filled: list[int] = field(default_factory=list)
    invalid: int = 0
    other_filled: dict[int, int] = field(default_factory=dict)
    other_unfilled: int = 0
    other_windows: int = 0  # strip windows the classical fill of the other bands ran on


def inpaint_scene(cfg: InpaintSceneConfig, *, bundle=None, fill_fn: FillFn | None = None,
                  on_note: Callable[[str], None] | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> InpaintSummary:
    """Inpaint ``cfg.input`` into ``cfg.output`` (+ sidecars). ``bundle`` (an already loaded
    :class:`~models.checkpoint.InferenceBundle`) and ``fill_fn`` override loading the model.
    ``on_note`` receives each warning (what was taken as holes, a nodata value inside the data
    range, ...) as it is found; they are also in ``summary.notes``. ``on_progress(done, total)``:
    tiles of the grid dealt with (filled, or skipped without a hole) out of the grid's tiles
    (:mod:`models.inference`), ending at ``(summary.tiles_total, summary.tiles_total)``."""
    t0 = time.perf_counter()
    input_path, output = Path(cfg.input), Path(cfg.output)
    paths = _check_paths(input_path, output)
    info = inspect_scene(input_path, cfg.bands, zero_is_nodata=cfg.zero_is_nodata)
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if on_note is not None:
            on_note(text)

    for text in info.notes:
        note(text)

    from models.device import require_device

    require_device(cfg.device)
    if bundle is None and fill_fn is None:
        bundle = _load_bundle(cfg.model, cfg.device)
    model_name = bundle.name if bundle is not None else "custom-fill-fn"
    model_rad = bundle.radiometry if bundle is not None else Radiometry()
    edge_params = bundle.edge_params if bundle is not None else EdgeParams()
    tile = cfg.tile or (bundle.patch_size if bundle is not None else 256)
    batch = cfg.batch_size or (32 if cfg.device.startswith("cuda") else 4)
    tiling = TilingConfig(tile=tile, overlap=min(cfg.overlap, tile // 2), batch_size=batch)
    if fill_fn is None:
        fill_fn = model_fill_fn(bundle, cfg.device)
    stats = InferenceStats()
    with SceneMasker(info, cfg.mask) as masker, gdal_env(), rasterio.open(info.path) as src:
        _require_some_valid(info, src)
        cache: list[np.ndarray] = []

        def sample() -> np.ndarray:  # read at most once, only when needed
            if not cache:
                cache.append(_valid_sample(info, src))
            return cache[0]

        radiometry = scene_radiometry(info, model_rad, src, sample)
        in_range = _nodata_in_range(info, sample)
        readers = _open_references(cfg, info, src, radiometry)
        ref_counts = ReferenceCounts()
        if readers:
            fill_fn = reference_fill_fn(len(readers), fill_fn, cfg.reference_fill, ref_counts)
            for r in readers:
                note(f"reference {r.name} ({r.acquired or 'date unknown'}): valid on {r.valid_fraction:.1%} of the "
                     f"target grid")
        with AtomicFiles(list(paths.values())) as atomic:
            tmp_data, tmp_mask = atomic.temp("data.tif"), atomic.temp("mask.tif")
            try:
                counts = _stream(src, info, masker, fill_fn, radiometry, edge_params, tiling, stats,
                                 tmp_data, tmp_mask, cfg.other_bands, on_progress, readers)
            except rasterio.errors.RasterioError as exc:
                raise InpaintError(f"raster I/O failed while inpainting {info.path}: "
                                   f"{' '.join(str(exc).split())}") from exc
            finally:
                for r in readers:
                    r.close()
            _notes_after_stream(info, cfg, counts, in_range, note)
            to_cog(tmp_data, atomic.temp(paths["output"]), predictor=3 if info.dtype == "float32" else 2)
            to_cog(tmp_mask, atomic.temp(paths["filled_mask"]), predictor=2)
            write_quicklook(tmp_data, tmp_mask, info, radiometry, atomic.temp(paths["quicklook"]), cfg.quicklook_px)
            other = list(info.other_bands)
            summary = InpaintSummary(
                **paths, model=model_name, width=info.width, height=info.height, filled_pixels=counts.filled,
                filled_fraction=counts.filled / (info.width * info.height), tiles_total=stats.tiles_total,
                tiles_run=stats.tiles_run, skipped_fraction=stats.skipped_fraction,
                seconds=time.perf_counter() - t0, radiometry=radiometry.model_dump(),
                bands=list(range(1, info.count + 1)), model_bands=list(info.bands), other_bands=other,
                other_bands_handling=OTHER_BANDS_HANDLING[cfg.other_bands] if other else "none (no other band)",
                other_bands_filled=counts.other_filled, other_bands_unfilled=counts.other_unfilled,
                alpha_band=info.alpha_band, mask_source=cfg.mask.kind, nodata_rule=describe_invalid(info),
                zero_is_nodata=info.zero_fill, invalid_pixels=counts.invalid, notes=notes,
                **_reference_summary(cfg, readers, counts))
            write_stac_item(summary, info, cfg, atomic.temp(paths["stac_item"]))
            atomic.commit()
    summary.seconds = time.perf_counter() - t0
    return summary


def _notes_after_stream(info: SceneInfo, cfg: InpaintSceneConfig, counts: StreamCounts,
                        in_range: tuple[float, float] | None, note: Callable[[str], None]) -> None:
    name, bands = info.path.name, ",".join(map(str, info.bands))
    total = info.width * info.height
    if info.zero_fill and counts.invalid:
        note(f"{name} has no nodata value: {counts.invalid} px ({counts.invalid / total:.1%}) with DN 0 in any of "
             f"bands {bands} were taken as fill (holes), the Landsat fill-is-0 convention; pass "
             f"--no-zero-is-nodata to keep zeros as data")
    if in_range is not None:
        note(f"the nodata value {info.nodata:g} of {name} lies inside its data range ({in_range[0]:g}..{in_range[1]:g}): "
             f"{counts.invalid} px equal to it in any of bands {bands} were taken as holes and filled, as the tag "
             f"says; if {info.nodata:g} is real data there, fix the tag first (e.g. gdal_edit.py -unsetnodata on a copy)")
    if counts.filled == 0 and not any(counts.other_filled.values()):
        note(f"no hole found in {name} (mask source {cfg.mask.kind}; nodata: {describe_invalid(info)}): "
             f"the output is a copy of the input")
    if counts.other_unfilled:
        note(f"{counts.other_unfilled} px of bands {','.join(map(str, info.other_bands))} had no valid pixel within "
             f"{OTHER_FILL_DISTANCE} rows and were left as nodata")


def _stream(src, info: SceneInfo, masker: SceneMasker, fill_fn: FillFn, radiometry: Radiometry,
            edge_params: EdgeParams, tiling: TilingConfig, stats: InferenceStats,
            tmp_data: Path, tmp_mask: Path, other_bands: OtherBands = "fill",
            on_progress: Callable[[int, int], None] | None = None,
            readers: list[ReferenceReader] = ()) -> StreamCounts:
    """Run the strip engine and write data (every band) + filled-mask GeoTIFFs. With ``readers``
    (references on the target grid, nearest date first) each strip carries them as auxiliary
    channels (:mod:`models.reference.scene`)."""
    latest: dict[int, object] = {}  # the last strip read with every band (the engine yields it next)
    latest_valid: dict[int, np.ndarray] = {}  # its references' validity (R, rows, W)

    def read_strip(r0: int, r1: int):
        window = Window(0, r0, info.width, r1 - r0)
        masks = masker.read(src, window, all_bands=True)
        latest.clear()
        latest[r0] = masks
        if not readers:
            return masks.stored, masks.hole, masks.unknown
        aux = np.empty((CHANNELS_PER_REFERENCE * len(readers), r1 - r0, info.width), np.float32)
        for k, reader in enumerate(readers):
            unit, valid = reader.read(window)
            aux[CHANNELS_PER_REFERENCE * k:CHANNELS_PER_REFERENCE * k + 3] = unit
            aux[CHANNELS_PER_REFERENCE * k + 3] = valid
        latest_valid.clear()
        latest_valid[r0] = aux[CHANNELS_PER_REFERENCE - 1::CHANNELS_PER_REFERENCE] > 0.5
        return masks.stored, masks.hole, masks.unknown, aux

    def to_unit(values: np.ndarray) -> np.ndarray:  # holes may hold NaN: never let it reach the model
        return np.nan_to_num(radiometry.to_unit(values), nan=0.0, copy=False)

    nodata, fill_value = info.nodata, info.fill_value
    model_idx = [b - 1 for b in info.bands]
    fill_others = bool(info.other_bands) and other_bands == "fill"
    write_mask = info.has_internal_mask and info.alpha_band is None
    counts = StreamCounts(other_filled={b: 0 for b in info.other_bands} if fill_others else {},
                          reference_filled=[0] * len(readers))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), \
            rasterio.open(tmp_data, "w", **output_profile(info)) as dst, \
            rasterio.open(tmp_mask, "w", **output_profile(info, count=1, dtype="uint8", nodata=None)) as mdst:
        copy_metadata(src, dst)
        mdst.set_band_description(1, "filled (1 = hole filled by edgefill, 2 = only other bands' nodata filled, "
                                     "0 = input kept)")
        for strip in inpaint_strips(read_strip, info.height, info.width, fill_fn, to_unit,
                                    edge_params, tiling, stats, on_progress):
            n = strip.row1 - strip.row0
            masks = latest[strip.row0]
            out = masks.all_stored[:, :n].copy()
            rgb = composite(strip.stored, strip.pred01, strip.hole, radiometry, fill_value)
            keep_invalid = strip.unknown & ~strip.hole
            if nodata is not None and keep_invalid.any():
                rgb[:, keep_invalid] = np.asarray(nodata, dtype=rgb.dtype)
            out[model_idx] = rgb
            filled_code = strip.hole.astype(np.uint8)
            if fill_others:
                own = masks.band_invalid[:, :n]
                targets = {b: strip.hole | (own[b - 1] & ~strip.unknown) for b in info.other_bands}
                if any(t.any() for t in targets.values()):
                    only_other = _fill_other_bands(src, masker, info, strip.row0, strip.row1, out, counts)
                    filled_code[only_other & ~strip.hole] = 2
            if info.alpha_band is not None and strip.hole.any():
                out[info.alpha_band - 1][strip.hole] = _opaque(out.dtype)
            win = Window(0, strip.row0, info.width, n)
            dst.write(out, window=win)
            if write_mask:
                dst.write_mask(np.where(~strip.unknown | strip.hole, 255, 0).astype(np.uint8), window=win)
            mdst.write(filled_code[None], window=win)
            counts.filled += int(strip.hole.sum())
            if readers:
                open_ = strip.hole.copy()
                for k, valid in enumerate(latest_valid[strip.row0][:, :n]):
                    counts.reference_filled[k] += int((open_ & valid).sum())
                    open_ &= ~valid
            counts.invalid += int(masks.invalid[:n].sum())
    return counts


def _opaque(dtype) -> float:
    return np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0


def _fill_other_bands(src, masker: SceneMasker, info: SceneInfo, r0: int, r1: int, out: np.ndarray,
                      counts: StreamCounts) -> np.ndarray:
    """Fill the holes of the other bands in rows [r0, r1) of ``out`` (every band, in place) from a
    window reaching :data:`OTHER_FILL_DISTANCE` rows beyond; returns (r1-r0, W) bool, True where
    some other band was filled. A band's holes: the model's holes plus its own invalid pixels
    where the model bands are valid; its sources: its valid pixels outside the holes."""
    from rasterio.fill import fillnodata

    a, b = max(0, r0 - OTHER_FILL_DISTANCE), min(info.height, r1 + OTHER_FILL_DISTANCE)
    masks = masker.read(src, Window(0, a, info.width, b - a), all_bands=True)
    inner = slice(r0 - a, r1 - a)
    counts.other_windows += 1
    any_filled = np.zeros((r1 - r0, info.width), bool)
    for band in info.other_bands:
        own = masks.band_invalid[band - 1]
        target = masks.hole | (own & ~masks.unknown)
        if not target[inner].any():
            continue
        sources = ~(own | masks.hole)
        values = masks.all_stored[band - 1].astype(np.float32)
        values[~sources] = np.nan
        if sources.any():
            values = fillnodata(values, mask=sources.astype(np.uint8), max_search_distance=OTHER_FILL_DISTANCE,
                                smoothing_iterations=0)
            left = np.isnan(values) & target
            if left[inner].any():
                values[left] = _harmonic(values, sources)[left]
        done = target[inner] & ~np.isnan(values[inner])
        counts.other_unfilled += int((target[inner] & ~done).sum())
        if done.any():
            fill = values[inner][done]
            if np.issubdtype(out.dtype, np.integer):
                lim = np.iinfo(out.dtype)
                fill = np.clip(np.rint(fill), lim.min, lim.max)
            fill = fill.astype(out.dtype)
            if info.fill_value is not None:
                avoid_nodata(fill, info.fill_value)
            out[band - 1][done] = fill
            counts.other_filled[band] += int(done.sum())
            any_filled |= done
    return any_filled


def _harmonic(values: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Harmonic (push-pull + Jacobi) fill of ``values`` (h, w) from the ``sources`` pixels."""
    import torch

    from models.networks import smooth_fill

    known = torch.from_numpy(sources.astype(np.float32))[None, None]
    image = torch.from_numpy(np.where(sources, values, 0).astype(np.float32))[None, None]
    with torch.no_grad():
        return smooth_fill(image, known)[0, 0].numpy()


def _display(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(3, h, w) values -> (h, w, 3) uint8 with a 2-98 % stretch of valid pixels."""
    rgb = rgb.astype(np.float32)
    valid = valid & np.isfinite(rgb).all(axis=0)
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0)
    out = np.zeros(rgb.shape[1:] + (3,), np.uint8)
    for b in range(3):
        vals = rgb[b][valid] if valid.any() else rgb[b].ravel()
        lo, hi = np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0)
        out[..., b] = np.clip((rgb[b] - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    out[~valid] = 0
    return out


def write_quicklook(data_path: Path, mask_path: Path, info: SceneInfo, radiometry: Radiometry,
                    dst: Path, max_px: int = 512) -> Path:
    """PNG: before (input, holes black) | filled mask (white) | after, decimated reads only."""
    from PIL import Image

    step = max(1, -(-max(info.height, info.width) // max_px))
    with gdal_env():
        with rasterio.open(data_path) as after_src, rasterio.open(mask_path) as mask_src, \
                rasterio.open(info.path) as before_src:
            after = read_decimated(after_src, list(info.bands), step)
            valid_after = np.ones(after.shape[1:], bool)
            if info.has_internal_mask:  # the output keeps the input's internal mask / alpha band
                valid_after = read_decimated(after_src, info.bands[0], step, masks=True) > 0
            hole = read_decimated(mask_src, 1, step) == 1
            before = read_decimated(before_src, list(info.bands), step)
    shape = hole.shape
    valid_after &= ~nodata_from_values(after, info.nodata, info.zero_fill)
    before_valid = valid_after & ~hole
    panel_after = _display(after, valid_after)
    panel_before = _display(before, before_valid)
    panel_mask = np.repeat((hole * 255).astype(np.uint8)[..., None], 3, axis=2)
    gap = np.full((shape[0], 4, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([panel_before, gap, panel_mask, gap, panel_after], axis=1)).save(dst, format="PNG")
    return dst


def write_stac_item(summary: InpaintSummary, info: SceneInfo, cfg: InpaintSceneConfig, dst: Path) -> Path:
    """A STAC item for the result (relative asset hrefs: the item lives beside the COG)."""
    import pystac
    from rasterio.warp import transform_bounds
    from shapely.geometry import box, mapping

    bounds = rasterio.transform.array_bounds(info.height, info.width, info.transform)
    bbox = list(transform_bounds(info.crs, "EPSG:4326", *bounds, densify_pts=21))
    item = pystac.Item(
        id=Path(summary.output).stem, geometry=mapping(box(*bbox)), bbox=bbox,
        datetime=dt.datetime.now(dt.timezone.utc),
        properties={"edgefill:model": summary.model, "edgefill:input": str(Path(cfg.input).name),
                    "edgefill:mask_source": cfg.mask.kind, "edgefill:dilate": cfg.mask.dilate,
                    "edgefill:filled_pixels": summary.filled_pixels,
                    "edgefill:filled_fraction": summary.filled_fraction,
                    "edgefill:radiometry": summary.radiometry,
                    "edgefill:bands": summary.bands, "edgefill:model_bands": summary.model_bands,
                    "edgefill:other_bands": summary.other_bands,
                    "edgefill:other_bands_handling": summary.other_bands_handling,
                    "edgefill:other_bands_filled": {str(k): v for k, v in summary.other_bands_filled.items()},
                    "edgefill:alpha_band": summary.alpha_band,
                    "edgefill:nodata_rule": summary.nodata_rule, "edgefill:zero_is_nodata": summary.zero_is_nodata,
                    "edgefill:invalid_pixels": summary.invalid_pixels, "edgefill:notes": summary.notes,
                    "edgefill:reference_fill": summary.reference_fill, "edgefill:references": summary.references,
                    "edgefill:single_image_share": summary.single_image_share,
                    **({"proj:code": f"EPSG:{info.crs.to_epsg()}"} if info.crs.to_epsg()
                       else {"proj:wkt2": info.crs.to_wkt()}),
                    "proj:shape": [info.height, info.width], "proj:transform": list(info.transform)[:6]},
        stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json"])
    item.add_asset("data", pystac.Asset(href=f"./{Path(summary.output).name}", roles=["data"],
                                        media_type=pystac.MediaType.COG, title="inpainted scene"))
    item.add_asset("filled_mask", pystac.Asset(href=f"./{Path(summary.filled_mask).name}", roles=["data"],
                                               media_type=pystac.MediaType.COG,
                                               title="1 = hole filled, 2 = only other bands' nodata filled"))
    item.add_asset("quicklook", pystac.Asset(href=f"./{Path(summary.quicklook).name}", roles=["overview"],
                                             media_type=pystac.MediaType.PNG, title="before | mask | after"))
    dst.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2))
    return dst



def summary_markdown(summary: dict, input_path: str | Path) -> str:
    """Markdown for the ``inpaint-scene`` artifact (``summary`` = ``InpaintSummary.model_dump(mode="json")``
    of ``input_path``): what was filled, how, where the outputs are, and the quicklook."""
    from pipeline.pictures import picture_markdown

    notes = "\n\n" + "\n".join(f"- note: {n}" for n in summary["notes"]) if summary["notes"] else ""
    if summary.get("references"):
        shares = ", ".join(f"`{r['file']}` {r['share']:.1%}" for r in summary["references"])
        notes = (f"\n\nReferences ({summary['reference_fill']}): {shares}; single-image model "
                 f"{summary['single_image_share']:.1%}." + notes)
    return (f"## Inpainted `{Path(input_path).name}`\n\nmodel `{summary['model']}` on bands "
            f"{summary['model_bands']}, {summary['filled_pixels']} px filled ({summary['filled_fraction']:.2%}), "
            f"{summary['tiles_run']}/{summary['tiles_total']} tiles through the model, "
            f"{summary['seconds']:.1f} s. Other bands {summary['other_bands']}: "
            f"{summary['other_bands_handling']}. Holes: mask source `{summary['mask_source']}`; "
            f"nodata: {summary['nodata_rule']}.{notes}\n\nCOG `{summary['output']}`, "
            f"STAC `{summary['stac_item']}`\n\n"
            + picture_markdown(summary["quicklook"], "quicklook: input | mask | output"))


__all__ = ["OTHER_FILL_DISTANCE", "OtherBands", "InpaintError", "InpaintSceneConfig", "InpaintScenesConfig",
           "InpaintSettings", "InpaintSummary", "summary_markdown",
           "RasterInputError", "StreamCounts", "avoid_nodata", "default_output", "inpaint_scene", "output_paths", "scene_radiometry",
           "write_quicklook", "write_stac_item"]

"""Inpaint one GeoTIFF scene: read -> mask -> tiled G1/G2 inference -> COG + filled mask +
quicklook PNG + STAC item. The plain function behind ``edgefill inpaint`` and the
``inpaint-scene`` flow.

Outputs (``OUT`` = the output path; all written to a temp dir beside it, then renamed):

- ``OUT`` (.tif): Cloud-Optimized GeoTIFF, the input's CRS, transform, nodata, dtype and band
  descriptions (selected bands only, in the selected order), DEFLATE, internal overviews.
  Non-hole pixels are bit-for-bit the input's; the scene's own invalid pixels that are not
  holes (e.g. edge fill with ``--slc-off``) keep the nodata value; a filled pixel never equals
  the nodata value (:func:`avoid_nodata`).
- ``OUT.filled_mask.tif``: uint8 COG on the same grid, 1 = filled by the model, 0 = input kept.
- ``OUT.quicklook.png``: before | hole mask | after, at most ``quicklook_px`` px high.
- ``OUT.stac.json``: a STAC item (projection extension fields, the three assets, model name,
  radiometry, fill statistics).

Radiometry: input of the model's stored dtype uses the model's normalisation
(``bundle.radiometry``); another dtype (e.g. uint16 DN for a uint8 model) is stretched per
scene like :mod:`pipeline.scenes` does (valid-pixel percentiles 0.5 / 99.5 -> 1/255 .. 1),
recorded in the STAC item; outputs are converted back with the same linear map.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field
from rasterio.windows import Window

from models.inference import FillFn, InferenceStats, TilingConfig, avoid_nodata, composite, inpaint_strips, model_fill_fn
from pipeline.edges import EdgeParams
from pipeline.raster_io import (AtomicOutputs, RasterInputError, SceneInfo, gdal_env, inspect_scene,
                                nodata_from_values, nodata_mask, output_profile, read_bands, to_cog)
from pipeline.scene_masks import MaskSource, SceneMasker
from pipeline.store import Radiometry


class InpaintError(ValueError):
    """The scene cannot be inpainted as asked (bad paths, unknown model, nothing valid, ...)."""


class InpaintSceneConfig(BaseModel):
    """One scene's inpainting job (the flow's and the CLI's parameters)."""

    model_config = ConfigDict(frozen=True)
    input: Path
    output: Path
    model: str = Field("current", description="run dir or registry name")
    mask: MaskSource = MaskSource()
    bands: tuple[int, ...] | None = Field(None, description="1-based band indices (R, G, B); default 1,2,3")
    device: str = "cpu"
    overlap: int = Field(32, ge=0, description="px shared by neighbouring tiles (blended)")
    batch_size: int | None = Field(None, ge=1, description="tiles per model call; default 4 on CPU, 32 on CUDA")
    tile: int | None = Field(None, description="tile px; default the model's patch size")
    quicklook_px: int = Field(512, ge=32)


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


def scene_radiometry(info: SceneInfo, model_radiometry: Radiometry, src) -> Radiometry:
    """The model's normalisation when dtypes agree, else a per-scene percentile stretch."""
    if info.dtype == model_radiometry.dtype:
        return model_radiometry
    step = max(1, max(info.width, info.height) // 1024)
    shape = (len(info.bands), max(1, info.height // step), max(1, info.width // step))
    sample = src.read(list(info.bands), out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    valid = ~nodata_from_values(sample, info.nodata)
    if not valid.any():
        raise InpaintError(f"{info.path}: no valid pixel found to derive a radiometric stretch")
    return Radiometry.stretch(sample[:, valid], info.dtype)


def _require_some_valid(info: SceneInfo, src) -> None:
    """Raise unless the scene has at least one valid pixel (stops at the first block that has one)."""
    block = 512
    for r in range(0, info.height, block):
        win = Window(0, r, info.width, min(block, info.height - r))
        if not nodata_mask(src, info, read_bands(src, info, win), win).all():
            return
    raise InpaintError(f"{info.path} holds no valid pixel (every pixel is nodata/fill): nothing to inpaint from")


def _load_bundle(model, device: str):
    from models.checkpoint import CheckpointError, load_inference_bundle

    try:
        return load_inference_bundle(model, device=device)
    except KeyError as exc:
        raise InpaintError(str(exc.args[0]) if exc.args else str(exc)) from exc
    except CheckpointError as exc:
        raise InpaintError(f"cannot load model {model!r}: {exc}") from exc


def inpaint_scene(cfg: InpaintSceneConfig, *, bundle=None, fill_fn: FillFn | None = None) -> InpaintSummary:
    """Inpaint ``cfg.input`` into ``cfg.output`` (+ sidecars). ``bundle`` (an already loaded
    :class:`~models.checkpoint.InferenceBundle`) and ``fill_fn`` override loading the model."""
    t0 = time.perf_counter()
    input_path, output = Path(cfg.input), Path(cfg.output)
    paths = _check_paths(input_path, output)
    info = inspect_scene(input_path, cfg.bands)
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InpaintError(f"device {cfg.device!r} asked for but CUDA is not available here; use --device cpu")
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
        radiometry = scene_radiometry(info, model_rad, src)
        with AtomicOutputs(list(paths.values())) as atomic:
            tmp_data, tmp_mask = atomic.temp("data.tif"), atomic.temp("mask.tif")
            filled = _stream(src, info, masker, fill_fn, radiometry, edge_params, tiling, stats, tmp_data, tmp_mask)
            to_cog(tmp_data, atomic.temp(paths["output"]), predictor=3 if info.dtype == "float32" else 2)
            to_cog(tmp_mask, atomic.temp(paths["filled_mask"]), predictor=2)
            write_quicklook(tmp_data, tmp_mask, info, radiometry, atomic.temp(paths["quicklook"]), cfg.quicklook_px)
            summary = InpaintSummary(
                **paths, model=model_name, width=info.width, height=info.height, filled_pixels=filled,
                filled_fraction=filled / (info.width * info.height), tiles_total=stats.tiles_total,
                tiles_run=stats.tiles_run, skipped_fraction=stats.skipped_fraction,
                seconds=time.perf_counter() - t0, radiometry=radiometry.model_dump())
            write_stac_item(summary, info, cfg, atomic.temp(paths["stac_item"]))
            atomic.commit()
    summary.seconds = time.perf_counter() - t0
    return summary


def _stream(src, info: SceneInfo, masker: SceneMasker, fill_fn: FillFn, radiometry: Radiometry,
            edge_params: EdgeParams, tiling: TilingConfig, stats: InferenceStats,
            tmp_data: Path, tmp_mask: Path) -> int:
    """Run the strip engine and write data + filled-mask GeoTIFFs; returns the filled pixel count."""
    def read_strip(r0: int, r1: int):
        masks = masker.read(src, Window(0, r0, info.width, r1 - r0))
        return masks.stored, masks.hole, masks.unknown

    nodata = info.nodata
    filled = 0
    with rasterio.open(tmp_data, "w", **output_profile(info)) as dst, \
            rasterio.open(tmp_mask, "w", **output_profile(info, count=1, dtype="uint8", nodata=None)) as mdst:
        for i, desc in enumerate(info.descriptions, start=1):
            if desc:
                dst.set_band_description(i, desc)
        mdst.set_band_description(1, "filled (1 = filled by edgefill, 0 = input kept)")
        for strip in inpaint_strips(read_strip, info.height, info.width, fill_fn, radiometry.to_unit,
                                    edge_params, tiling, stats):
            out = composite(strip.stored, strip.pred01, strip.hole, radiometry, nodata)
            keep_invalid = strip.unknown & ~strip.hole
            if nodata is not None and keep_invalid.any():
                out[:, keep_invalid] = np.asarray(nodata, dtype=out.dtype)
            win = Window(0, strip.row0, info.width, strip.row1 - strip.row0)
            dst.write(out, window=win)
            mdst.write(strip.hole.astype(np.uint8)[None], window=win)
            filled += int(strip.hole.sum())
    return filled


def _display(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(3, h, w) values -> (h, w, 3) uint8 with a 2-98 % stretch of valid pixels."""
    rgb = rgb.astype(np.float32)
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
    shape = (max(1, info.height // step), max(1, info.width // step))
    with gdal_env():
        with rasterio.open(data_path) as after_src, rasterio.open(mask_path) as mask_src, \
                rasterio.open(info.path) as before_src:
            after = after_src.read(out_shape=(3, *shape))
            hole = mask_src.read(1, out_shape=shape).astype(bool)
            before = before_src.read(list(info.bands), out_shape=(3, *shape))
    valid_after = ~nodata_from_values(after, info.nodata) if info.nodata is not None else np.ones(shape, bool)
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
                    **({"proj:code": f"EPSG:{info.crs.to_epsg()}"} if info.crs.to_epsg()
                       else {"proj:wkt2": info.crs.to_wkt()}),
                    "proj:shape": [info.height, info.width], "proj:transform": list(info.transform)[:6]},
        stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json"])
    item.add_asset("data", pystac.Asset(href=f"./{Path(summary.output).name}", roles=["data"],
                                        media_type=pystac.MediaType.COG, title="inpainted scene"))
    item.add_asset("filled_mask", pystac.Asset(href=f"./{Path(summary.filled_mask).name}", roles=["data"],
                                               media_type=pystac.MediaType.COG, title="1 = filled by the model"))
    item.add_asset("quicklook", pystac.Asset(href=f"./{Path(summary.quicklook).name}", roles=["overview"],
                                             media_type=pystac.MediaType.PNG, title="before | mask | after"))
    dst.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2))
    return dst


__all__ = ["InpaintError", "InpaintSceneConfig", "InpaintSummary", "RasterInputError", "avoid_nodata",
           "default_output", "inpaint_scene", "output_paths", "scene_radiometry", "write_quicklook", "write_stac_item"]

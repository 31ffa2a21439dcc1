"""Sliding-window inference over a scene of any size, streamed in strips of tile rows.

Engine (:func:`inpaint_strips`)
- The scene is covered by a grid of ``tile`` x ``tile`` windows, stride ``tile - overlap``; the
  last row/column of tiles is aligned to the scene's end (scenes smaller than a tile are padded
  by mirror reflection). Only tiles containing at least one *hole* pixel go through the model.
- Each tile is converted to float [0, 1], its known edges are computed by THE edge function
  training uses for G1's input (:func:`pipeline.edges.known_edges`: Canny of the masked tile,
  unknown pixels excluded) and it is filled by a batched ``fill_fn``.
- Overlapping predictions are blended with a separable raised-cosine window ``w(y) w(x)``
  (flat 1 in the tile's middle, tapering to ~0 over ``overlap`` px at each side). Every tile
  of the grid that covers a hole pixel contains that hole, so it runs: the blend weight of a
  hole pixel is therefore ``(sum_i w(y - r_i)) (sum_j w(x - c_j))`` and no weight raster is kept.
- Strips are emitted top to bottom as soon as no later tile can touch their rows, so memory is
  O(tile x scene width), independent of the scene's height (see bench/inpaint.py).
- Within a strip, the inputs of every batch (conversion, known edges) are prepared on
  ``TilingConfig.prepare_threads`` background threads, in order, so Canny of the next batches
  runs while the model fills the current one (OpenCV and a GPU model both release the GIL).
- Compositing (in the caller's dtype) keeps every non-hole pixel's stored value bit-for-bit.
- Progress: ``on_progress(done, total)`` is called with ``done`` = tiles of the grid dealt with
  so far (filled by the model, or skipped because they hold no hole) out of ``total`` = the tiles
  in the grid (known before the first strip is read; counting the tiles with holes first would
  read the whole scene twice): once at the start (0), when a strip's tiles without holes are
  skipped, and after every model batch; the last call is ``(total, total)``.
  :class:`ProgressLines` turns it into rate-limited text lines (logs that are not a terminal).

``fill_fn(images01 (N,3,t,t), mask (N,1,t,t), edges (N,1,t,t)) -> (N,3,t,t)`` float32 arrays in
[0, 1], mask 1 = missing, edges 1 = edge: :func:`model_fill_fn` wraps G1 then G2 of a
:class:`models.checkpoint.InferenceBundle`; tests plug in simpler callables. A ``read_strip`` that
returns a fourth array, auxiliary channels (A, rows, W) float32 on the same grid (the reference
acquisitions of :mod:`models.reference.scene`), has them tiled alongside and passed as
``fill_fn(images01, mask, edges, aux (N,A,t,t))``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.edges import EdgeParams, known_edges

FillFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: read_strip(r0, r1) -> (stored (C, r1-r0, W), hole (r1-r0, W) bool, unknown (r1-r0, W) bool[, aux (A, r1-r0, W)])
StripReader = Callable[[int, int], tuple[np.ndarray, ...]]
ToUnit = Callable[[np.ndarray], np.ndarray]
#: on_progress(done, total): tiles of the grid dealt with so far, tiles in the grid
ProgressFn = Callable[[int, int], None]


class TilingConfig(BaseModel):
    """Tile grid and batching. ``tile`` px (multiple of 4; the model's patch size by default),
    ``overlap`` px between neighbouring tiles, ``batch_size`` tiles per model call."""

    model_config = ConfigDict(frozen=True)
    tile: int = Field(256, ge=16)
    overlap: int = Field(32, ge=0)
    batch_size: int = Field(4, ge=1)
    prepare_threads: int = Field(1, ge=1, description="threads preparing the next batches' inputs (Canny) "
                                 "while the model runs on the current one")

    @model_validator(mode="after")
    def _check(self) -> "TilingConfig":
        if self.tile % 4:
            raise ValueError(f"tile must be a multiple of 4 (the generators downsample by 4), got {self.tile}")
        if self.overlap >= self.tile // 2 + 1:
            raise ValueError(f"overlap {self.overlap} must be at most half the tile ({self.tile})")
        return self

    @property
    def stride(self) -> int:
        return self.tile - self.overlap


@dataclass
class InferenceStats:
    """Counts of one run (tiles in the grid, tiles sent to the model, model calls)."""

    tiles_total: int = 0
    tiles_run: int = 0
    batches: int = 0
    hole_pixels: int = 0

    tiles_done: int = 0  # tiles of the grid dealt with so far (run or skipped)

    @property
    def skipped_fraction(self) -> float:
        return 1.0 - self.tiles_run / self.tiles_total if self.tiles_total else 1.0


class ProgressLines:
    """An ``on_progress(done, total)`` that writes a line ``"{label}: 12/40 tiles (30%), 8 s"`` through
    ``emit`` at a bounded rate: at the first call, whenever another ``step`` of the total is done or
    ``every_s`` seconds have passed since the last line, and at the end (at most ~1/step + 2
    lines, plus one per ``every_s``)."""

    def __init__(self, emit: Callable[[str], None], label: str = "inpaint", step: float = 0.1,
                 every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.emit, self.label, self.step, self.every_s, self.clock = emit, label, step, every_s, clock
        self.t0 = self.last_t = None
        self.next_fraction = 0.0
        self.ended = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.t0 is None:
            self.t0 = self.last_t = now
        fraction = done / total if total else 1.0
        final = done >= total
        if self.ended or not (final or fraction >= self.next_fraction or now - self.last_t >= self.every_s):
            return
        self.last_t, self.ended = now, final  # the end is said once
        self.next_fraction = (int(fraction / self.step + 1e-9) + 1) * self.step
        self.emit(f"{self.label}: {done}/{total} tiles ({fraction:.0%}), {now - self.t0:.0f} s")


@dataclass
class StripResult:
    """Final rows ``[row0, row1)``: stored values, blended prediction (None when no hole) and masks.

    ``pred01`` is a view into the engine's buffer: valid until the generator resumes."""

    row0: int
    row1: int
    stored: np.ndarray
    pred01: np.ndarray | None
    hole: np.ndarray
    unknown: np.ndarray = field(repr=False)


def blend_window_1d(tile: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """(tile,) float64 raised-cosine taper: ~0 -> 1 over ``overlap`` px at both ends, 1 between."""
    w = np.ones(tile, np.float64)
    if overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap] = ramp
        w[tile - overlap:] = ramp[::-1]
    return np.maximum(w, floor)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of tiles covering ``[0, length)``; the last one ends exactly at ``length``
    (``length`` is at least ``tile``: smaller scenes are padded first)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def coverage_weight(length: int, tile: int, starts: list[int], w: np.ndarray) -> np.ndarray:
    """(length,) sum of the 1-D blend windows of all tiles covering each position."""
    total = np.zeros(length, np.float64)
    for s in starts:
        total[s:s + tile] += w
    return total


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - a.shape[-2], w - a.shape[-1]
    if ph <= 0 and pw <= 0:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, max(ph, 0)), (0, max(pw, 0))]
    return np.pad(a, pad, mode="symmetric")


def inpaint_strips(read_strip: StripReader, height: int, width: int, fill_fn: FillFn, to_unit: ToUnit,
                   edge_params: EdgeParams = EdgeParams(), tiling: TilingConfig = TilingConfig(),
                   stats: InferenceStats | None = None,
                   on_progress: ProgressFn | None = None) -> Iterator[StripResult]:
    """Stream a scene through the tiled model; yields final row strips top to bottom.
    ``on_progress(done, total)``: tiles dealt with (see the module docstring)."""
    stats = stats if stats is not None else InferenceStats()
    t = tiling.tile
    hv, wv = max(height, t), max(width, t)
    rows, cols = tile_starts(hv, t, tiling.stride), tile_starts(wv, t, tiling.stride)
    w1 = blend_window_1d(t, tiling.overlap)
    w2 = (w1[:, None] * w1[None, :]).astype(np.float32)
    wy, wx = coverage_weight(hv, t, rows, w1), coverage_weight(wv, t, cols, w1)
    grid = len(rows) * len(cols)
    stats.tiles_total += grid
    acc = np.zeros((3, t, wv), np.float32)  # blended sum for rows [r, r + t) of the current strip
    start = stats.tiles_done

    def progress(n: int) -> None:
        stats.tiles_done += n
        if on_progress is not None:
            on_progress(stats.tiles_done - start, grid)

    progress(0)
    with ThreadPoolExecutor(max_workers=tiling.prepare_threads) as pool:
        yield from _strips(read_strip, height, width, fill_fn, to_unit, edge_params, tiling, stats, rows, cols, wv,
                           w2, wy, wx, acc, pool, progress)


def _batch_inputs(s_p: np.ndarray, u_p: np.ndarray, a_p: np.ndarray | None, batch: list[int], t: int,
                  to_unit: ToUnit, edge_params: EdgeParams) -> tuple[np.ndarray, ...]:
    """(masked images01, masks, known edges[, aux]) of the tiles starting at columns ``batch``."""
    imgs = np.stack([to_unit(s_p[:, :, c:c + t]) for c in batch]).astype(np.float32)
    masks = np.stack([u_p[None, :, c:c + t] for c in batch]).astype(np.float32)
    imgs *= 1.0 - masks
    edges = np.stack([known_edges(img, m[0] > 0.5, edge_params)[None] for img, m in zip(imgs, masks)]).astype(np.float32)
    if a_p is None:
        return imgs, masks, edges
    return imgs, masks, edges, np.stack([a_p[:, :, c:c + t] for c in batch]).astype(np.float32)


def _strips(read_strip, height, width, fill_fn, to_unit, edge_params, tiling, stats, rows, cols, wv, w2, wy, wx,
            acc, pool, progress: Callable[[int], None]) -> Iterator[StripResult]:
    t = tiling.tile
    for i, r in enumerate(rows):
        r_end = min(r + t, height)
        stored, hole, unknown, *aux = read_strip(r, r_end)
        if stored.ndim != 3 or stored.shape[1:] != (r_end - r, width):
            raise ValueError(f"read_strip returned {stored.shape}, expected (C, {r_end - r}, {width})")
        s_p, h_p, u_p = _pad_to(stored, t, wv), _pad_to(hole, t, wv), _pad_to(unknown, t, wv)
        a_p = _pad_to(aux[0], t, wv) if aux else None
        todo = [c for c in cols if h_p[:, c:c + t].any()]
        stats.tiles_run += len(todo)
        if len(todo) < len(cols):
            progress(len(cols) - len(todo))  # tiles without a hole: nothing to run
        stats.hole_pixels += int(hole[: (rows[i + 1] - r) if i + 1 < len(rows) else None].sum())
        batches = [todo[b:b + tiling.batch_size] for b in range(0, len(todo), tiling.batch_size)]
        # the inputs (conversion, known edges) of later batches are prepared while the model runs
        prepared = [pool.submit(_batch_inputs, s_p, u_p, a_p, batch, t, to_unit, edge_params) for batch in batches]
        for batch, future in zip(batches, prepared):
            inputs = future.result()
            imgs = inputs[0]
            out = np.asarray(fill_fn(*inputs), dtype=np.float32)
            if out.shape != imgs.shape:
                raise ValueError(f"fill_fn returned shape {out.shape}, expected {imgs.shape}")
            stats.batches += 1
            for c, pred in zip(batch, out):
                acc[:, :, c:c + t] += pred * w2
            progress(len(batch))
        last = i + 1 == len(rows)
        n = (r_end - r) if last else rows[i + 1] - r
        pred = None
        if hole[:n].any():  # every tile covering these holes has run (it contains them)
            pred = acc[:, :n, :width]  # normalised in place: these rows are final
            pred /= wy[r:r + n, None].astype(np.float32)
            pred /= wx[None, :width].astype(np.float32)
            np.clip(pred, 0.0, 1.0, out=pred)
        yield StripResult(r, r + n, stored[:, :n], pred, hole[:n], unknown[:n])
        if not last:
            acc[:, : t - n] = acc[:, n:]
            acc[:, t - n:] = 0.0


def inpaint_array(stored: np.ndarray, hole: np.ndarray, fill_fn: FillFn, to_unit: ToUnit,
                  unknown: np.ndarray | None = None, edge_params: EdgeParams = EdgeParams(),
                  tiling: TilingConfig = TilingConfig(), stats: InferenceStats | None = None) -> np.ndarray:
    """In-memory convenience: (C, H, W) stored values -> (C, H, W) float32 [0, 1] prediction where
    ``hole``, ``to_unit(stored)`` elsewhere (the caller converts back and composites)."""
    unknown = hole if unknown is None else unknown | hole
    h, w = hole.shape
    out = to_unit(stored).astype(np.float32)
    reader = lambda r0, r1: (stored[:, r0:r1], hole[r0:r1], unknown[r0:r1])  # noqa: E731
    for s in inpaint_strips(reader, h, w, fill_fn, to_unit, edge_params, tiling, stats):
        if s.pred01 is not None:
            region = out[:, s.row0:s.row1]
            region[:, s.hole] = s.pred01[:, s.hole]
    return out


def avoid_nodata(values: np.ndarray, nodata: float) -> np.ndarray:
    """Filled values equal to the output's nodata value would read back as holes: move them one
    step away (the next integer, or the next float32 towards +inf). Modifies ``values`` in place."""
    clash = values == nodata
    if clash.any():
        if np.issubdtype(values.dtype, np.integer):
            values[clash] = nodata + 1 if nodata < np.iinfo(values.dtype).max else nodata - 1
        else:
            values[clash] = np.nextafter(values.dtype.type(nodata), values.dtype.type(np.inf))
    return values


def composite(stored: np.ndarray, pred01: np.ndarray | None, hole: np.ndarray, radiometry,
              nodata: float | None = None) -> np.ndarray:
    """What is written: ``stored`` (C, h, w) bit for bit outside ``hole``; inside, the prediction
    (C, h, w) in [0, 1] converted back by ``radiometry.from_unit`` (rounded to the stored dtype),
    never equal to ``nodata``. Returns a new array of the stored dtype."""
    out = stored.copy()
    if pred01 is not None and hole.any():
        values = radiometry.from_unit(pred01[:, hole]).astype(out.dtype)
        out[:, hole] = values if nodata is None else avoid_nodata(values, nodata)
    return out


def fill_stored_patch(stored: np.ndarray, hole: np.ndarray, fill_fn: FillFn, radiometry,
                      edge_params: EdgeParams = EdgeParams(), tiling: TilingConfig = TilingConfig()) -> np.ndarray:
    """The deployment path for one patch held in memory: the tiled engine
    (:func:`inpaint_array`, exactly what ``edgefill inpaint`` streams), then :func:`composite`.
    ``stored`` (C, H, W) in its stored dtype, ``hole`` (H, W) bool; returns the stored dtype."""
    pred = inpaint_array(stored, hole, fill_fn, radiometry.to_unit, edge_params=edge_params, tiling=tiling)
    return composite(stored, pred, hole, radiometry)


def networks_fill_fn(g1, g2, device: str = "cpu", bf16: bool | None = None,
                     edge_sink: list | None = None) -> FillFn:
    """G1 then G2 (in eval mode) as a batched ``fill_fn``.

    G1 completes the known edges from (mask, known edges); its probabilities replace the edges
    inside the hole (EdgeConnect's composite); G2 fills RGB from the masked image and those edges.
    On CUDA the forward runs under bf16 autocast (``bf16=None`` -> on for CUDA, off for CPU).
    ``edge_sink``: a list that receives G1's edge probability (N, 1, t, t) of every call."""
    import torch

    from models.networks import edge_connect_forward

    dev = torch.device(device)
    use_bf16 = (dev.type == "cuda") if bf16 is None else bf16
    g1, g2 = g1.to(dev).eval(), g2.to(dev).eval()

    def fill(images01: np.ndarray, mask: np.ndarray, edges: np.ndarray) -> np.ndarray:
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
        with torch.inference_mode(), amp:
            x, m, e = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev, non_blocking=True)
                       for a in (images01, mask, edges))
            rgb, edge_prob = edge_connect_forward(g1, g2, x, e, m)
            rgb = rgb.float().clamp(0, 1)
        if edge_sink is not None:
            edge_sink.append(edge_prob.float().cpu().numpy())
        return rgb.cpu().numpy()

    return fill


def model_fill_fn(bundle, device: str = "cpu", bf16: bool | None = None, edge_sink: list | None = None) -> FillFn:
    """:func:`networks_fill_fn` of an :class:`~models.checkpoint.InferenceBundle`."""
    return networks_fill_fn(bundle.edge_generator, bundle.inpaint_generator, device, bf16, edge_sink)

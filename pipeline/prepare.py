"""prepare-dataset: edges (Dask over whole shards), the mask library and pairings, into the store.

The stage's one config is :class:`PrepareDatasetConfig` (store, seed, edge/mask/pairing settings,
Dask); :func:`prepare_dataset` runs it. ``prepare_store(store, config)`` adds to an exported store:

* ``edges`` (N, 1, P, P) uint8 (1 = edge), chunk = 1 patch, sharded exactly like ``images``,
  computed by :func:`pipeline.edges.edges_for_batch` (the function inference uses);
* ``edges_done`` (n_shards,) uint8: 1 once shard k of ``edges`` is written. Only shards whose
  ``export_done`` is 1 are computed; reruns skip finished shards, so a SIGKILL at any moment
  leaves a store that the next run completes (a shard is rewritten whole before being marked);
* ``masks`` / ``masks_kind`` / ``masks_ratio`` / ``masks_split`` (pipeline/masks/library.py),
  rebuilt only when the mask config changes; ``pairings/validation`` and ``pairings/test``
  (pipeline/pairings.py: fixed evaluation tables; training draws its masks when loading),
  recomputed each run (cheap and deterministic, and valid patches may have grown);
* ``attrs["prepare"]``: edge params, the whole config, its hash and the last run's summary.

Dask: one task per shard still to do (the store path and shard number travel, never arrays)
reads that image shard, computes and writes its edges on the worker and returns ``(edge pixels,
pixels)``: :func:`plan_edges` lists the shards, :func:`edges_shard` is the task, :func:`finish_edges`
sums up. :func:`compute_edges` runs them with ``distributed.Client.map`` (CLI, benchmarks); the
``prepare-dataset`` flow runs the same function as one retried Prefect task per shard on
prefect-dask's ``DaskTaskRunner`` (flows/prepare.py), on the same clusters. Shards are read and
written whole by :mod:`pipeline.shard_io` (one store call per shard instead of zarr's per-chunk
asyncio hops: that overhead cost more CPU than Canny itself). ``edges`` is compressed with
Blosc-LZ4 + bit-shuffle (as small as zstd on these sparse 0/1 patches, ~2x cheaper to write and
to read). Without a scheduler address a
``LocalCluster`` (threads: OpenCV, zstd and blosc release the GIL; no pickling of shards) is
started; with one, ``distributed.Client(address)`` runs the same tasks on that cluster (its
workers must see the store path). Masks and pairings use temp-then-rename; an edges shard is
marked done only after it is written, so nothing is half-written.
"""
from __future__ import annotations

import contextlib
import functools
import time
import uuid
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import zarr
from zarr.codecs import BloscCodec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.edges import EdgeParams, edges_for_stored
from pipeline.masks import MaskError
from pipeline.masks.library import MaskLibraryConfig, build_mask_library, replace_arrays, write_mask_library
from pipeline.pairings import EVAL_SPLITS, PairingConfig, build_eval_pairings, train_kind_pools
from pipeline.shard_io import read_shard, write_shard
from pipeline.store import (Radiometry, StoreError, config_hash, dimension_names, open_store, patch_indices, read_meta,
                            store_radiometry, update_prepare)


class DaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scheduler: str | None = Field(None, description="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                                  "(default: a LocalCluster on this machine)")
    n_workers: int = Field(1, ge=1, description="LocalCluster workers (when no scheduler is given)")
    threads_per_worker: int = Field(2, ge=1, description="threads per LocalCluster worker")
    processes: bool = False
    connect_timeout_s: float = Field(20.0, gt=0, description="how long to wait for the scheduler")


class PrepareConfig(BaseModel):
    """What prepare writes into the store (hashed and recorded in ``attrs["prepare"]``)."""

    edges: EdgeParams = EdgeParams()
    masks: MaskLibraryConfig = MaskLibraryConfig()
    pairings: PairingConfig = PairingConfig()


class PrepareDatasetConfig(BaseModel):
    """One prepare run: the one declaration of the prepare stage's parameters and defaults
    (``edgefill prepare``: ``--config FILE.yaml``, ``--set key=value`` and flags generated from these
    fields; the ``prepare-dataset`` flow's ``config`` parameter). ``seed`` is THE seed of the mask
    library and the pairings: it replaces ``masks.seed`` and ``pairings.seed``."""

    model_config = ConfigDict(extra="forbid")
    store: Path = Field(Path("demo_out/landsat.zarr"), description="exported store (STORE.zarr) to add edges, "
                        "masks and pairings to")
    seed: int = Field(0, description="seeds the mask library and the pairings")
    edges: EdgeParams = EdgeParams()
    masks: MaskLibraryConfig = MaskLibraryConfig()
    pairings: PairingConfig = PairingConfig()
    dask: DaskConfig = DaskConfig()

    @model_validator(mode="after")
    def _one_seed(self) -> "PrepareDatasetConfig":
        if self.masks.seed != self.seed or self.pairings.seed != self.seed:
            object.__setattr__(self, "masks", self.masks.model_copy(update={"seed": self.seed}))
            object.__setattr__(self, "pairings", self.pairings.model_copy(update={"seed": self.seed}))
        return self

    def prepare_config(self) -> PrepareConfig:
        """The part written into (and hashed in) the store."""
        return PrepareConfig(edges=self.edges, masks=self.masks, pairings=self.pairings)


class PrepareSummary(BaseModel):
    store: str
    n_patches: int
    shards_total: int
    shards_computed: int
    shards_skipped: int
    shards_not_exported: int
    edge_pixel_fraction: float | None
    n_masks: int
    masks_rebuilt: bool
    n_train_images: int
    n_validation_pairs: int
    n_test_pairs: int
    seconds: float
    config_hash: str


def summary_markdown(summary: PrepareSummary) -> str:
    """Markdown for the Prefect artifact."""
    return (f"## prepare-dataset `{summary.store}`\n\n| | |\n|---|---|\n| patches | {summary.n_patches} |\n"
            f"| shards computed / skipped / not exported | {summary.shards_computed} / "
            f"{summary.shards_skipped} / {summary.shards_not_exported} |\n"
            f"| masks | {summary.n_masks} ({'rebuilt' if summary.masks_rebuilt else 'kept'}) |\n"
            f"| train images (fresh mask per sample) | {summary.n_train_images} |\n"
            f"| fixed pairs validation / test | {summary.n_validation_pairs} / {summary.n_test_pairs} |\n"
            f"| seconds | {summary.seconds} |\n")


# ----------------------------------------------------------------------------- edges

#: ``edges`` compressor: bit-shuffled LZ4 (0/1 bytes -> one bit plane of data); ~5 KB a patch.
EDGES_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=1)


@functools.lru_cache(maxsize=4)
def _edges_arrays(store_path: str, run_id: str) -> tuple[zarr.Array, zarr.Array, zarr.Array]:
    """``images``, ``edges``, ``edges_done`` of a store, opened once per worker process and
    :func:`compute_edges` call (``run_id``; the arrays' metadata cannot change within one call)."""
    group = zarr.open_group(store_path, mode="r+", zarr_format=3)
    return group["images"], group["edges"], group["edges_done"]


def edges_shard(shard: int, store_path: str, radiometry: dict, params: dict, run_id: str) -> np.ndarray:
    """Worker side: edges of image shard ``shard``, written to the store, then the shard marked done.
    Returns ``[edge pixels, pixels]`` of the shard. Idempotent (a rerun rewrites the same shard)."""
    cv2.setNumThreads(1)  # parallelism comes from the Dask threads, one shard each
    images, edges_array, done = _edges_arrays(store_path, run_id)
    edges = edges_for_stored(read_shard(images, shard), Radiometry(**radiometry).to_unit, EdgeParams(**params))
    write_shard(edges_array, shard, edges)
    done[shard] = 1
    return np.array([np.count_nonzero(edges), edges.size], dtype=np.int64)


class EdgesPlan(BaseModel):
    """What one edges run does: the shards still to compute and the arguments every task gets."""

    store: str
    todo: list[int]
    radiometry: dict
    params: dict
    run_id: str
    summary: dict


@contextlib.contextmanager
def dask_client(cfg: DaskConfig) -> Iterator["distributed.Client"]:  # noqa: F821
    """A client on ``cfg.scheduler`` or on a fresh LocalCluster (closed on exit)."""
    import distributed

    if cfg.scheduler:
        try:
            client = distributed.Client(cfg.scheduler, timeout=f"{cfg.connect_timeout_s}s", set_as_default=False)
        except OSError as exc:
            raise ConnectionError(f"cannot reach the Dask scheduler at {cfg.scheduler}: {exc}") from exc
        with client:
            yield client
        return
    with distributed.LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                                  processes=cfg.processes, dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        yield client


def _ensure_edges_arrays(group: zarr.Group, params: EdgeParams) -> None:
    """Create ``edges`` + ``edges_done`` (or recreate them for other edge params / patch size;
    grow them, keeping finished shards, when the export grew the store)."""
    n, _, p, _ = group["images"].shape
    meta = read_meta(group)
    s = meta.shard_patches
    n_shards = -(-n // s)
    if "edges" in group:
        old = group["edges"].shape
        if meta.prepare.edge_params != params or old[1:] != (1, p, p) or old[0] > n:
            del group["edges"], group["edges_done"]
        elif old[0] < n:
            group["edges"].resize((n, 1, p, p))
            group["edges_done"].resize((n_shards,))
            if old[0] % s:  # the old last shard was partial: it has new patches now
                group["edges_done"][old[0] // s] = 0
    if "edges" not in group:
        group.create_array("edges", shape=(n, 1, p, p), dtype="uint8", chunks=(1, 1, p, p),
                           shards=(s, 1, p, p), fill_value=0, compressors=EDGES_COMPRESSOR,
                           dimension_names=dimension_names("edges"))
        group.create_array("edges_done", shape=(n_shards,), dtype="uint8", chunks=(1,), fill_value=0,
                           dimension_names=dimension_names("edges_done"))
        update_prepare(group, edge_params=params)


def plan_edges(store_path: str | Path, params: EdgeParams = EdgeParams()) -> EdgesPlan:
    """Create/grow ``edges`` + ``edges_done`` and list the exported shards whose edges are not done."""
    store_path = Path(store_path)
    group = open_store(store_path, "r+", require=("images", "export_done"))
    _ensure_edges_arrays(group, params)
    exported = group["export_done"][:].astype(bool)
    done = group["edges_done"][:].astype(bool)
    n_shards = len(done)
    exported = np.pad(exported, (0, max(0, n_shards - len(exported))))[:n_shards]
    todo = np.flatnonzero(exported & ~done)
    summary = {"shards_total": n_shards, "shards_computed": int(len(todo)),
               "shards_skipped": int((exported & done).sum()), "shards_not_exported": int((~exported).sum()),
               "edge_pixel_fraction": None}
    return EdgesPlan(store=str(store_path), todo=[int(k) for k in todo],
                     radiometry=store_radiometry(group).model_dump(), params=params.model_dump(),
                     run_id=uuid.uuid4().hex, summary=summary)


def finish_edges(plan: EdgesPlan, counts: list) -> dict:
    """The run's summary from the tasks' ``[edge pixels, pixels]`` counts."""
    summary = dict(plan.summary)
    if counts:
        totals = np.sum(np.asarray(counts, dtype=np.int64), axis=0)
        summary["edge_pixel_fraction"] = float(totals[0] / max(totals[1], 1))
    return summary


def compute_edges(store_path: str | Path, params: EdgeParams = EdgeParams(),
                  dask: DaskConfig = DaskConfig(), client=None) -> dict:
    """Edges of every exported, not yet finished shard (Dask); returns a small summary."""
    plan = plan_edges(store_path, params)
    if not plan.todo:
        return finish_edges(plan, [])
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(dask))
        futures = client.map(edges_shard, plan.todo, store_path=plan.store, radiometry=plan.radiometry,
                             params=plan.params, run_id=plan.run_id, pure=False)
        counts = client.gather(futures)
    return finish_edges(plan, counts)


# ----------------------------------------------------------------------------- masks + pairings

def ensure_mask_library(store_path: str | Path, config: MaskLibraryConfig) -> tuple[int, bool]:
    """Build + write the mask library unless the store already holds this exact config's."""
    group = open_store(store_path, "r+", require=("images",))
    p = group["images"].shape[-1]
    if config.size != p:
        raise MaskError(f"mask size {config.size} != the store's patch size {p}")
    h = config_hash(config.model_dump())
    if read_meta(group).prepare.masks_hash == h and all(a in group for a in ("masks", "masks_kind", "masks_ratio")):
        return int(group["masks"].shape[0]), False
    lib = build_mask_library(config)
    write_mask_library(group, lib)
    update_prepare(open_store(store_path, "r+", require=("images",)), masks_hash=h)
    return len(lib.masks), True


def write_pairings(store_path: str | Path, config: PairingConfig) -> tuple[int, int, int]:
    """(Re)compute ``pairings/validation`` and ``pairings/test`` from the valid patches and the
    split mask library; check that training can draw masks. Returns (train images, validation
    pairs, test pairs)."""
    group = open_store(store_path, "r+", require=("images", "valid", "split", "masks_kind", "masks_ratio", "masks_split"))
    kinds, ratios, splits = group["masks_kind"][:], group["masks_ratio"][:], group["masks_split"][:]
    train_kind_pools(kinds, splits, config.kind_weights)  # raises when training could draw no mask
    tables = {f"pairings/{s}": build_eval_pairings(patch_indices(group, s), kinds, ratios, splits, s, config)
              for s in EVAL_SPLITS}
    if "pairings" not in group:
        group.create_group("pairings")
    replace_arrays(group, tables, chunks={k: (max(len(v), 1), 3) for k, v in tables.items()})
    group = open_store(store_path, "r+", require=("images",))
    if "pairings/train" in group:  # a table of an older layout: training now draws its own pairs
        del group["pairings/train"]
    return len(patch_indices(group, "train")), len(tables["pairings/validation"]), len(tables["pairings/test"])


def prepare_store(store_path: str | Path, config: PrepareConfig = PrepareConfig(),
                  dask: DaskConfig = DaskConfig(), client=None) -> PrepareSummary:
    """Everything prepare adds to an exported store (idempotent, resumable)."""
    t0 = time.perf_counter()
    store_path = Path(store_path)
    group = open_store(store_path, "r", require=("images", "valid", "split", "export_done"))
    images = group["images"]
    if images.shape[0] == 0:
        raise StoreError(f"store {store_path} holds no patches (images has shape {images.shape})")
    edges = compute_edges(store_path, config.edges, dask, client)
    n_masks, rebuilt = ensure_mask_library(store_path, config.masks)
    counts = write_pairings(store_path, config.pairings)
    return record_prepare(store_path, config, edges, n_masks, rebuilt, counts, t0)


def prepare_dataset(config: PrepareDatasetConfig = PrepareDatasetConfig(), client=None) -> PrepareSummary:
    """The prepare stage over its one config (``edgefill prepare``): :func:`prepare_store` on
    ``config.store``."""
    return prepare_store(config.store, config.prepare_config(), config.dask, client)


def record_prepare(store_path: str | Path, config: PrepareConfig, edges: dict, n_masks: int, rebuilt: bool,
                   counts: tuple[int, int, int], t0: float) -> PrepareSummary:
    """Summarise a prepare run (started at ``time.perf_counter() == t0``) and record it in
    ``attrs["prepare"]`` (edge params, config and hash, last run, completeness)."""
    group = open_store(store_path, "r+", require=("images",))
    summary = PrepareSummary(store=str(store_path), n_patches=int(group["images"].shape[0]), **edges,
                             n_masks=n_masks, masks_rebuilt=rebuilt, n_train_images=counts[0],
                             n_validation_pairs=counts[1], n_test_pairs=counts[2],
                             seconds=round(time.perf_counter() - t0, 3),
                             config_hash=config_hash(config.model_dump()))
    update_prepare(group, config=config.model_dump(), config_hash=summary.config_hash, edge_params=config.edges,
                   last_run=summary.model_dump(), complete=summary.shards_not_exported == 0)
    return summary

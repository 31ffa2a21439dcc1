"""prepare-dataset: edges (Dask over whole shards), the mask library and pairings, into the store.

``prepare_store(store, config)`` adds to an exported store:

* ``edges`` (N, 1, P, P) uint8 (1 = edge), chunk = 1 patch, sharded exactly like ``images``,
  computed by :func:`pipeline.edges.edges_for_batch` (the function inference uses);
* ``edges_done`` (n_shards,) uint8: 1 once shard k of ``edges`` is written. Only shards whose
  ``export_done`` is 1 are computed; reruns skip finished shards, so a SIGKILL at any moment
  leaves a store that the next run completes (a shard is rewritten whole before being marked);
* ``masks`` / ``masks_kind`` / ``masks_ratio`` (pipeline/masks/library.py), rebuilt only when
  the mask config changes; ``pairings/train`` and ``pairings/test`` (pipeline/pairings.py),
  recomputed each run (cheap and deterministic, and valid patches may have grown);
* ``attrs["prepare"]``: edge params, the whole config, its hash and the last run's summary.

Dask: ``images`` is read with ``dask.array.from_zarr`` chunked by shard; one ``map_blocks``
call per shard-block computes and writes that shard's edges on the worker (the store path
travels, never arrays) and returns a 1-element count. Without a scheduler address a
``LocalCluster`` (threads; OpenCV releases the GIL) is started; with one,
``distributed.Client(address)`` runs the same graph on that cluster (its workers must see the
store path). Writes, masks and pairings use temp-then-rename so nothing is half-written.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import cv2
import dask.array as da
import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from pydantic import BaseModel, Field

from pipeline.edges import EdgeParams, edges_for_stored
from pipeline.masks import MaskError
from pipeline.masks.library import MaskLibraryConfig, build_mask_library, replace_arrays, write_mask_library
from pipeline.pairings import PairingConfig, build_test_pairings, build_train_pairings
from pipeline.store import Radiometry, StoreError, config_hash, open_store, patch_indices, store_radiometry


class DaskConfig(BaseModel):
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler (tcp://host:port)")
    n_workers: int = Field(1, ge=1, description="LocalCluster workers (when no scheduler is given)")
    threads_per_worker: int = Field(2, ge=1)
    processes: bool = False
    connect_timeout_s: float = Field(20.0, gt=0, description="how long to wait for the scheduler")


class PrepareConfig(BaseModel):
    edges: EdgeParams = EdgeParams()
    masks: MaskLibraryConfig = MaskLibraryConfig()
    pairings: PairingConfig = PairingConfig()


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
    n_train_pairs: int
    n_test_pairs: int
    seconds: float
    config_hash: str


# ----------------------------------------------------------------------------- edges

def _edges_shard(block: np.ndarray, store_path: str, todo: np.ndarray, radiometry: dict,
                 params: dict, block_info=None) -> np.ndarray:
    """Worker side: edges of one shard-block, written to the store, then the shard marked done."""
    cv2.setNumThreads(1)
    shard = int(todo[block_info[0]["chunk-location"][0]])
    edges = edges_for_stored(block, Radiometry(**radiometry).to_unit, EdgeParams(**params))
    group = zarr.open_group(store_path, mode="r+")
    s = group.attrs["shard_patches"]
    group["edges"][shard * s: shard * s + len(block)] = edges
    group["edges_done"][shard] = 1
    return np.array([edges.sum(), edges.size], dtype=np.int64)


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
    s = int(group.attrs["shard_patches"])
    n_shards = -(-n // s)
    prep = dict(group.attrs.get("prepare", {}))
    if "edges" in group:
        old = group["edges"].shape
        if prep.get("edge_params") != params.model_dump() or old[1:] != (1, p, p) or old[0] > n:
            del group["edges"], group["edges_done"]
        elif old[0] < n:
            group["edges"].resize((n, 1, p, p))
            group["edges_done"].resize((n_shards,))
            if old[0] % s:  # the old last shard was partial: it has new patches now
                group["edges_done"][old[0] // s] = 0
    if "edges" not in group:
        group.create_array("edges", shape=(n, 1, p, p), dtype="uint8", chunks=(1, 1, p, p),
                           shards=(s, 1, p, p), fill_value=0, compressors=ZstdCodec(level=1))
        group.create_array("edges_done", shape=(n_shards,), dtype="uint8", chunks=(1,), fill_value=0)
        prep["edge_params"] = params.model_dump()
        group.attrs["prepare"] = prep


def compute_edges(store_path: str | Path, params: EdgeParams = EdgeParams(),
                  dask: DaskConfig = DaskConfig(), client=None) -> dict:
    """Edges of every exported, not yet finished shard (Dask); returns a small summary."""
    store_path = Path(store_path)
    group = open_store(store_path, "r+", require=("images", "export_done"))
    _ensure_edges_arrays(group, params)
    s = int(group.attrs["shard_patches"])
    exported = group["export_done"][:].astype(bool)
    done = group["edges_done"][:].astype(bool)
    n_shards = len(done)
    exported = np.pad(exported, (0, max(0, n_shards - len(exported))))[:n_shards]
    todo = np.flatnonzero(exported & ~done)
    summary = {"shards_total": n_shards, "shards_computed": int(len(todo)),
               "shards_skipped": int((exported & done).sum()), "shards_not_exported": int((~exported).sum()),
               "edge_pixel_fraction": None}
    if len(todo) == 0:
        return summary
    images = da.from_zarr(group["images"], chunks=(s, *group["images"].shape[1:]))
    blocks = da.concatenate([images.blocks[int(k)] for k in todo], axis=0)
    counts = blocks.map_blocks(_edges_shard, str(store_path), tuple(int(k) for k in todo),
                               store_radiometry(group).model_dump(),
                               params.model_dump(), dtype=np.int64, chunks=(2,), drop_axis=[1, 2, 3],
                               meta=np.empty((0,), np.int64))
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(dask))
        totals = client.compute(counts.reshape(-1, 2).sum(axis=0)).result()
    summary["edge_pixel_fraction"] = float(totals[0] / max(totals[1], 1))
    return summary


# ----------------------------------------------------------------------------- masks + pairings

def ensure_mask_library(store_path: str | Path, config: MaskLibraryConfig) -> tuple[int, bool]:
    """Build + write the mask library unless the store already holds this exact config's."""
    group = open_store(store_path, "r+", require=("images",))
    p = group["images"].shape[-1]
    if config.size != p:
        raise MaskError(f"mask size {config.size} != the store's patch size {p}")
    h = config_hash(config.model_dump())
    prep = dict(group.attrs.get("prepare", {}))
    if prep.get("masks_hash") == h and all(a in group for a in ("masks", "masks_kind", "masks_ratio")):
        return int(group["masks"].shape[0]), False
    lib = build_mask_library(config)
    write_mask_library(group, lib)
    group = open_store(store_path, "r+", require=("images",))
    prep = dict(group.attrs.get("prepare", {}))
    prep["masks_hash"] = h
    group.attrs["prepare"] = prep
    return len(lib.masks), True


def write_pairings(store_path: str | Path, config: PairingConfig) -> tuple[int, int]:
    """(Re)compute pairings/train and pairings/test from the valid patches and the library."""
    group = open_store(store_path, "r+", require=("images", "valid", "split", "masks_kind", "masks_ratio"))
    kinds = group["masks_kind"][:]
    ratios = group["masks_ratio"][:]
    train = build_train_pairings(patch_indices(group, "train"), kinds, config)
    test = build_test_pairings(patch_indices(group, "test"), kinds, ratios, config)
    if "pairings" not in group:
        group.create_group("pairings")
    replace_arrays(group, {"pairings/train": train, "pairings/test": test},
                   chunks={"pairings/train": (max(len(train), 1), 3), "pairings/test": (max(len(test), 1), 3)})
    return len(train), len(test)


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
    n_train, n_test = write_pairings(store_path, config.pairings)
    summary = PrepareSummary(store=str(store_path), n_patches=int(images.shape[0]), **edges, n_masks=n_masks,
                             masks_rebuilt=rebuilt, n_train_pairs=n_train, n_test_pairs=n_test,
                             seconds=round(time.perf_counter() - t0, 3),
                             config_hash=config_hash(config.model_dump()))
    group = open_store(store_path, "r+", require=("images",))
    prep = dict(group.attrs.get("prepare", {}))
    prep.update({"config": config.model_dump(), "config_hash": summary.config_hash,
                 "edge_params": config.edges.model_dump(), "last_run": summary.model_dump(),
                 "complete": summary.shards_not_exported == 0})
    group.attrs["prepare"] = prep
    return summary

"""The GPU check's measurements (run by bench/gpu_check.sh; see there for how to run it).

Sections, each timed and recorded in ``$OUT/summary.json`` with its numbers or its error (one
failing section never hides the others):

- ``train_throughput``: joint training steps of the full preset at 256 x 256 (dry run: tiny at
  64 px) on real patches: images/s of fp32 eager, bf16 autocast + channels_last, and the same
  under ``torch.compile`` (or the recorded reason it is off), in the same run; peak GPU memory;
  the model's arithmetic per image (counted by ``torch.utils.flop_counter``) and the fraction of
  the bf16 peak it reaches (nominal dense peak and an 8192^3 bf16 matmul measured in the run).
- ``scene_inference``: Mpx/s of the tiled engine on an 8192 x 8192 mosaic of real patches
  (dry run: 512) under a real SLC-off gap pattern, batched bf16 tiles, the next batches'
  Canny prepared on CPU threads while the GPU fills.
- ``short_training``: the full preset trained a few hundred steps on the carried real store
  through ``models.train.train``; its G1/G2 weights come back in fp16 parts.

``--build-store PATH`` (here, with the full environment) writes the small real store the check
carries: bundled Landsat 7/5 scenes split by scene, a small split mask library and one real
SLC-off gap pattern (``gpu_check_slc_off``, 1 = gap).
"""
from __future__ import annotations

import argparse
import importlib.abc
import io
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOMINAL_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12}  # dense bf16 FLOP/s of the SXM parts
STORE_SCENES = {"LE07_P090R083_20000913_C07": "train", "LE07_P091R083_20001006_C13": "train",
                "LE07_P093R085_20001004_C25": "train", "LE07_P093R086_20001005_C33": "train",
                "LT05_NANJING_20000503": "train", "LE07_P092R086_19991128_C19": "validation",
                "LE07_TAIZHOU_20000317": "validation", "LE07_P034R032_20010924_C01": "test",
                "LE07_OLINDA_STARS": "test"}
PART_BYTES = 15 * 2 ** 20


class _Forbid(importlib.abc.MetaPathFinder):
    """Refuse imports the GPU image could not satisfy (the dry run proves the check avoids them)."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"{fullname} is not on the GPU image (EDGEFILL_FORBID_MODULES)")
        return None


def build_store(path: Path) -> Path:
    """The carried store: real patches of STORE_SCENES, a small split mask library, a real gap pattern."""
    import numpy as np

    from pipeline.export import export_landsat
    from pipeline.export_config import ExportConfig
    from pipeline.masks import RATIO_BINS
    from pipeline.masks.from_rasters import real_gap_masks
    from pipeline.masks.library import MaskKindSpec, MaskLibraryConfig
    from pipeline.pairings import PairingConfig
    from pipeline.prepare import DaskConfig, PrepareConfig, prepare_store
    from pipeline.store import open_store

    export_landsat(ExportConfig(source="local", out=path, scenes=list(STORE_SCENES), splits=STORE_SCENES, stride=128,
                                shard_patches=16))
    masks = MaskLibraryConfig(kinds=[MaskKindSpec(kind="irregular", count=25),
                                     MaskKindSpec(kind="slc_off", count=15, bins=list(RATIO_BINS[:3])),
                                     MaskKindSpec(kind="slc_off_real", count=10), MaskKindSpec(kind="cloud", count=10)])
    prepare_store(path, PrepareConfig(masks=masks, pairings=PairingConfig(eval_pairs_per_bin=2)),
                  DaskConfig(threads_per_worker=2))
    group = open_store(path, "r+", require=("images",))
    gaps = max(real_gap_masks(), key=lambda m: m.size).astype(np.uint8)
    if "gpu_check_slc_off" in group:
        del group["gpu_check_slc_off"]
    group.create_array("gpu_check_slc_off", shape=gaps.shape, dtype="uint8", chunks=gaps.shape)
    group["gpu_check_slc_off"][...] = gaps
    return path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _real_batch(store: Path, n: int, size: int, device):
    """``n`` real training samples of ``size`` px (keys of epoch 0), on ``device``."""
    import torch

    from models.data import collate
    from pipeline.dataset import TrainingSamples

    ds = TrainingSamples(store, crop_size=size if size < 256 else None, seed=0)
    items = [ds[(0, i, i % len(ds))] for i in range(n)]
    return {k: v.to(device) for k, v in collate(items).items() if isinstance(v, torch.Tensor)}


def _matmul_peak(device, dry: bool) -> float | None:
    import torch

    if device.type != "cuda" or dry:
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 2 * 8192 ** 3 * 10 / (time.perf_counter() - t0)


def train_throughput(device, dry: bool, store: Path) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.config import ModelConfig
    from models.trainer import Trainer

    preset, size, batch, steps, warmup = ("tiny", 64, 2, 2, 1) if dry else ("full", 256, 32, 20, 5)
    data = _real_batch(store, batch, size, device)
    out: dict = {"preset": preset, "size_px": size, "batch": batch, "mode": "joint", "variants": {}}
    variants = [("fp32_eager", False, False, False), ("bf16_channels_last", True, True, False),
                ("bf16_channels_last_compile", True, True, True)]
    for name, amp, cl, compiled in variants:
        try:
            cfg = ModelConfig.preset(preset, mode="joint", batch_size=batch, amp_bf16=amp, channels_last=cl,
                                     compile=compiled, compile_backend="eager" if dry else "inductor")
            trainer = Trainer(cfg, device)
            for _ in range(warmup):
                trainer.train_step(data)
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step(data)
            _sync(device)
            dt = time.perf_counter() - t0
            out["variants"][name] = {"images_per_s": steps * batch / dt,
                                     "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated(device) / 2 ** 30
                                                          if device.type == "cuda" else None)}
        except Exception as exc:  # compile may be unavailable: record why, keep measuring
            out["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    cfg = ModelConfig.preset(preset, mode="joint", batch_size=batch, amp_bf16=False, channels_last=False)
    trainer = Trainer(cfg, device)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(data)
    flops_per_image = counter.get_total_flops() / batch
    out["flops_per_image"] = flops_per_image
    base = out["variants"].get("fp32_eager", {}).get("images_per_s")
    peak_measured = _matmul_peak(device, dry)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    nominal = next((v for k, v in NOMINAL_BF16_PEAK.items() if k in name), None)
    out.update(device_name=name, bf16_matmul_flops_measured=peak_measured, bf16_peak_nominal=nominal)
    for v in out["variants"].values():
        if "images_per_s" in v:
            achieved = v["images_per_s"] * flops_per_image
            v["achieved_tflops"] = achieved / 1e12
            v["speedup_vs_fp32_eager"] = v["images_per_s"] / base if base else None
            v["fraction_of_nominal_bf16_peak"] = achieved / nominal if nominal else None
            v["fraction_of_measured_bf16_matmul"] = achieved / peak_measured if peak_measured else None
    return out


def scene_inference(device, dry: bool, store: Path) -> dict:
    import numpy as np
    import torch

    from models.checkpoint import InferenceBundle
    from models.config import ModelConfig
    from models.inference import InferenceStats, TilingConfig, inpaint_array, model_fill_fn
    from models.networks import build_networks
    from pipeline.edges import EdgeParams
    from pipeline.store import open_store, patch_indices, store_radiometry

    size = 512 if dry else 8192
    group = open_store(store)
    idx = patch_indices(group)
    patches = np.stack([group["images"][int(i)] for i in idx[:64]])
    reps = -(-size // 256)
    grid = np.concatenate([np.concatenate([patches[(r * reps + c) % len(patches)] for c in range(reps)], axis=2)
                           for r in range(reps)], axis=1)[:, :size, :size]
    gaps = np.asarray(group["gpu_check_slc_off"][:]).astype(bool)
    hole = np.tile(gaps, (-(-size // gaps.shape[0]), -(-size // gaps.shape[1])))[:size, :size]
    preset = "tiny" if dry else "full"
    cfg = ModelConfig.preset(preset)
    nets = build_networks(cfg)
    bundle = InferenceBundle(edge_generator=nets["g1"], inpaint_generator=nets["g2"], model_config=cfg,
                             radiometry=store_radiometry(group), edge_params=EdgeParams(), patch_size=256, name=preset)
    fill = model_fill_fn(bundle, str(device), bf16=device.type == "cuda")
    threads = max(1, min(8, (os.cpu_count() or 2) - 1))
    tiling = TilingConfig(tile=256, overlap=32, batch_size=4 if dry else 32, prepare_threads=threads)
    warm = InferenceStats()
    inpaint_array(grid[:, :512, :512], hole[:512, :512], fill, bundle.radiometry.to_unit, tiling=tiling, stats=warm)
    _sync(device)
    stats = InferenceStats()
    t0 = time.perf_counter()
    out = inpaint_array(grid, hole, fill, bundle.radiometry.to_unit, tiling=tiling, stats=stats)
    _sync(device)
    dt = time.perf_counter() - t0
    assert np.isfinite(out).all()
    return {"preset": preset, "scene_px": [size, size], "hole_fraction": float(hole.mean()), "seconds": dt,
            "mpx_per_s": size * size / dt / 1e6, "tiles_run": stats.tiles_run, "tiles_total": stats.tiles_total,
            "tiles_per_s": stats.tiles_run / dt, "batch": tiling.batch_size, "prepare_threads": threads,
            "bf16": device.type == "cuda", "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated(device) / 2 ** 30
                                                                if device.type == "cuda" else None)}


def short_training(device, dry: bool, store: Path, out_dir: Path) -> dict:
    import hashlib

    import torch

    from models.checkpoint import load_checkpoint
    from models.train import build_config, train

    steps = 3 if dry else 300
    overrides = ["schedule.mape_every=100", "schedule.mape_patches=8", "train.checkpoint_every=100",
                 "train.log_every=10", "train.sample_every=100000", "train.num_workers=0" if dry else "train.num_workers=6"]
    cfg = build_config("tiny" if dry else "full", mode="joint", max_steps=steps, batch_size=2 if dry else 16,
                       crop_size=64 if dry else None, overrides=overrides)
    run = out_dir / "run"
    summary = train(store, run, cfg, device=str(device), progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    buf = io.BytesIO()
    torch.save({k: {n: t.half() for n, t in ckpt["models"][k].items()} for k in ("g1", "g2")}, buf)
    blob = buf.getvalue()
    parts = []
    for i in range(0, len(blob), PART_BYTES):
        part = out_dir / f"g1g2_fp16.pt.part{i // PART_BYTES}"
        part.write_bytes(blob[i:i + PART_BYTES])
        parts.append(part.name)
    return {"steps": summary.steps, "seconds": summary.seconds, "images_per_s": summary.images_per_s,
            "stage": summary.stage, "validation_start": summary.held_out_start, "validation_end": summary.held_out_end,
            "weights_parts": parts, "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "config": cfg.model_dump(mode="json")["train"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench_out" / "gpu_check")
    p.add_argument("--store", type=Path, default=ROOT / "bench_out" / "gpu_store.zarr")
    p.add_argument("--cpu-dry-run", action="store_true")
    p.add_argument("--build-store", type=Path, help="write the carried store here and exit")
    p.add_argument("--pytest-rc", type=int, default=None)
    a = p.parse_args(argv)
    if a.build_store:
        build_store(a.build_store)
        print(f"built {a.build_store}")
        return 0
    if not a.store.exists():
        if not a.cpu_dry_run:
            print(f"the carried store {a.store} is missing: build it here with "
                  f"`python bench/gpu_check.py --build-store {a.store}` and carry it")
            return 2
        env = {k: v for k, v in os.environ.items() if k != "EDGEFILL_FORBID_MODULES"}
        subprocess.run([sys.executable, __file__, "--build-store", str(a.store)], check=True, env=env)
    forbid = {m for m in os.environ.get("EDGEFILL_FORBID_MODULES", "").split(",") if m}
    if forbid:
        sys.meta_path.insert(0, _Forbid(forbid))
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not a.cpu_dry_run else "cpu")
    a.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"mode": "cpu-dry-run" if a.cpu_dry_run else "gpu", "device": str(device), "torch": torch.__version__,
                     "cuda_tests_rc": a.pytest_rc, "sections": {}}
    ok = True
    for name, fn in (("train_throughput", lambda: train_throughput(device, a.cpu_dry_run, a.store)),
                     ("scene_inference", lambda: scene_inference(device, a.cpu_dry_run, a.store)),
                     ("short_training", lambda: short_training(device, a.cpu_dry_run, a.store, a.out))):
        t0 = time.perf_counter()
        try:
            result = fn()
            result["section_seconds"] = time.perf_counter() - t0
            summary["sections"][name] = result
            print(f"{name}: ok in {result['section_seconds']:.1f} s", flush=True)
        except Exception as exc:
            ok = False
            summary["sections"][name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:],
                                         "section_seconds": time.perf_counter() - t0}
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)
        (a.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    tp = summary["sections"].get("train_throughput", {}).get("variants", {})
    si = summary["sections"].get("scene_inference", {})
    for k, v in tp.items():
        if "images_per_s" in v:
            print(f"train {k}: {v['images_per_s']:.1f} images/s (x{v.get('speedup_vs_fp32_eager') or 0:.2f} vs fp32 eager)")
    if "mpx_per_s" in si:
        print(f"scene inference: {si['mpx_per_s']:.2f} Mpx/s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

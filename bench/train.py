"""Training throughput: images/s of G1 (edge), G2 (inpaint) and joint steps.

    .venv/bin/python bench/train.py [--steps 5] [--size 128] [--batch 4] [--threads N]

CPU: tiny config, fp32. Ratios are versus the G1 step measured in the same run. When CUDA is
available it also runs the FULL config at 256 px: bf16 autocast + channels_last versus fp32
eager, same run, and prints the speed-up.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models.config import ModelConfig  # noqa: E402
from models.trainer import Trainer  # noqa: E402


def _batch(n: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1
    edges = (torch.rand(n, 1, size, size, generator=g) > 0.9).float()
    return {"image": torch.rand(n, 3, size, size, generator=g), "edges": edges, "known_edges": edges * (1 - mask),
            "mask": mask}


def images_per_s(cfg: ModelConfig, mode: str, device: torch.device, size: int, batch: int, steps: int, warmup: int = 2) -> float:
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"mode": mode, "batch_size": batch})})
    trainer = Trainer(cfg, device)
    b = _batch(batch, size, device)
    for _ in range(warmup):
        trainer.train_step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gpu-steps", type=int, default=10)
    p.add_argument("--gpu-batch", type=int, default=8)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cpu = torch.device("cpu")
    tiny = ModelConfig.tiny(amp_bf16=False, channels_last=False)
    print(f"CPU tiny config, {a.size}px, batch {a.batch}, {torch.get_num_threads()} threads, {a.steps} timed steps")
    base = None
    for mode in ("edge", "inpaint", "joint"):
        ips = images_per_s(tiny, mode, cpu, a.size, a.batch, a.steps)
        base = base or ips
        print(f"  {mode:8s} {ips:8.2f} images/s   ratio vs edge {ips / base:5.2f}")
    if not torch.cuda.is_available():
        print("CUDA not available: GPU path (full config, bf16+channels_last vs fp32) skipped")
        return
    gpu = torch.device("cuda")
    print(f"GPU {torch.cuda.get_device_name()} full config, 256px, batch {a.gpu_batch}, {a.gpu_steps} timed steps")
    for mode in ("edge", "inpaint", "joint"):
        fp32 = ModelConfig.full(amp_bf16=False, channels_last=False)
        fast = ModelConfig.full(amp_bf16=True, channels_last=True)
        r32 = images_per_s(fp32, mode, gpu, 256, a.gpu_batch, a.gpu_steps)
        rbf = images_per_s(fast, mode, gpu, 256, a.gpu_batch, a.gpu_steps)
        print(f"  {mode:8s} fp32 eager {r32:8.1f} img/s | bf16+channels_last {rbf:8.1f} img/s | speed-up {rbf / r32:5.2f}x")


if __name__ == "__main__":
    main()

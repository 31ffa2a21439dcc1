"""The GPU check's CPU dry run (`bash bench/gpu_check.sh --cpu-dry-run`): the same script and code
paths as on the GPU machine, short of CUDA, without the modules the GPU image lacks."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_measures_every_section(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "cpu-dry-run" and summary["cuda_tests_rc"] == 0
    junit = (tmp_path / "out" / "cuda_tests.xml").read_text()
    assert 'skipped="6"' in junit and 'tests="6"' in junit  # every CUDA test collected, skipped without a GPU
    sections = summary["sections"]
    assert set(sections) == {"train_throughput", "scene_inference", "short_training"}
    assert not [name for name, s in sections.items() if "error" in s], {n: s.get("error") for n, s in sections.items()}
    variants = sections["train_throughput"]["variants"]
    assert set(variants) == {"fp32_eager", "bf16_channels_last", "bf16_channels_last_compile"}
    tp = sections["train_throughput"]
    # the FLOP count of one training step is the networks': at least forward + backward (~3x the
    # forward) of G1 and G2 on the step's images, at most ~10x the forward of all four networks
    fwd_g, fwd_all = _forward_flops(tp["size_px"])
    assert 3 * fwd_g <= tp["flops_per_image"] <= 10 * fwd_all, (tp["flops_per_image"], fwd_g, fwd_all)
    timed = 2 * tp["batch"] * len(variants)  # 2 timed steps per variant (1 warm-up) in the dry run
    for name, v in variants.items():
        # the timed steps fit in the section's wall time; 2 CPU cores do not reach 1 TFLOP/s
        assert timed / len(variants) / v["images_per_s"] <= tp["section_seconds"], name
        assert v["achieved_tflops"] == pytest.approx(v["images_per_s"] * tp["flops_per_image"] / 1e12) and \
            v["achieved_tflops"] < 1.0, name
    assert variants["fp32_eager"]["speedup_vs_fp32_eager"] == 1.0
    si = sections["scene_inference"]
    # a 512 px scene in 256 px tiles overlapping 32 px: a 3 x 3 grid; the SLC-off stripes cross every tile
    assert si["scene_px"] == [512, 512] and si["tiles_total"] == 9 and si["tiles_run"] == 9
    assert 0.05 < si["hole_fraction"] < 0.5
    assert si["mpx_per_s"] == pytest.approx(512 * 512 / si["seconds"] / 1e6)
    assert si["tiles_per_s"] == pytest.approx(9 / si["seconds"]) and si["seconds"] <= si["section_seconds"]
    st = sections["short_training"]
    assert st["steps"] == 3 and st["images_per_s"] == pytest.approx(3 * st["config"]["batch_size"] / st["seconds"], rel=0.01)
    parts = sections["short_training"]["weights_parts"]
    assert parts and all((tmp_path / "out" / p).stat().st_size <= 15 * 2 ** 20 for p in parts)


def _forward_flops(size: int) -> tuple[float, float]:
    """FLOPs of one forward pass per image of the tiny preset: (G1 + G2, G1 + G2 + D1 + D2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.config import ModelConfig
    from models.networks import build_networks

    nets = build_networks(ModelConfig.tiny())
    x1, x3 = torch.zeros(1, 1, size, size), torch.zeros(1, 3, size, size)
    flops = {}
    with torch.no_grad():
        for key, args in (("g1", (x1, x1)), ("g2", (x3, x1, x1)), ("d1", (x1,)), ("d2", (x3,))):
            with FlopCounterMode(display=False) as counter:
                nets[key](*args)
            flops[key] = counter.get_total_flops()
    return flops["g1"] + flops["g2"], sum(flops.values())

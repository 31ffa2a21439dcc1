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
    assert all(v["images_per_s"] > 0 for v in variants.values()) and sections["train_throughput"]["flops_per_image"] > 0
    assert sections["scene_inference"]["mpx_per_s"] > 0 and sections["scene_inference"]["tiles_run"] > 0
    parts = sections["short_training"]["weights_parts"]
    assert parts and all((tmp_path / "out" / p).stat().st_size <= 15 * 2 ** 20 for p in parts)

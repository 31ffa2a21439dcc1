"""CUDA paths (`pytest -m cuda`, skipped without a GPU; bench/gpu_check.sh runs them on one):
bf16 autocast training of the full preset, channels_last, torch.compile, checkpoints moving
between CUDA and CPU, and CUDA inference equal to CPU inference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, load_inference_bundle, save_inference_bundle
from models.config import ModelConfig
from models.inference import TilingConfig, inpaint_array, model_fill_fn
from models.networks import build_networks
from models.trainer import Trainer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def _batch(n: int, size: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 3: size // 3 + 12] = 1  # a scan-gap-like stripe
    image = torch.rand(n, 3, size, size, generator=g) * 0.3 + 0.05
    edges = (torch.rand(n, 1, size, size, generator=g) > 0.9).float()
    return {k: v.to(device) for k, v in {"image": image, "edges": edges, "known_edges": edges * (1 - mask),
                                          "mask": mask}.items()}


@pytest.mark.parametrize("residual", [False, True])
def test_full_preset_bf16_channels_last_steps_are_finite_with_fp32_heads(residual):
    cfg = ModelConfig.full(batch_size=4, amp_bf16=True, channels_last=True)
    cfg = cfg.model_copy(update={"g2_residual_fill": residual, "g2_normalise": residual})
    trainer = Trainer(cfg, CUDA)
    assert trainer.amp and trainer.memory_format == torch.channels_last
    assert trainer.nets["g2"].body[1].weight.is_contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        scalars = trainer.train_step(_batch(4, 256, CUDA))
    assert all(np.isfinite(v) for v in scalars.values()), scalars
    b = _batch(2, 256, CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        rgb = trainer.nets["g2"](b["image"] * (1 - b["mask"]), b["known_edges"], b["mask"])
        prob = trainer.nets["g1"](b["known_edges"], b["mask"])
    assert rgb.dtype == torch.float32 and prob.dtype == torch.float32


def test_torch_compile_of_the_generators_matches_eager():
    cfg = ModelConfig.tiny()
    nets = build_networks(cfg)
    g2 = nets["g2"].to(CUDA).eval()
    compiled = torch.compile(g2)
    b = _batch(2, 128, CUDA)
    with torch.no_grad():
        eager = g2(b["image"] * (1 - b["mask"]), b["known_edges"], b["mask"])
        fast = compiled(b["image"] * (1 - b["mask"]), b["known_edges"], b["mask"])
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)


def test_checkpoint_written_on_cuda_resumes_on_cpu_and_back(tmp_path):
    cfg = ModelConfig.tiny(batch_size=2, amp_bf16=True)
    trainer = Trainer(cfg, CUDA)
    trainer.train_step(_batch(2, 64, CUDA))
    from models.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "cuda_run", trainer.checkpoint_payload(), step=trainer.state.step)
    ckpt = load_checkpoint(tmp_path / "cuda_run" / "checkpoints" / "last.pt", map_location="cpu")
    cpu = Trainer(cfg, torch.device("cpu"))
    cpu.restore(ckpt)
    for key in ("g1", "g2", "d1", "d2"):
        for (name, a), b in zip(trainer.nets[key].state_dict().items(), cpu.nets[key].state_dict().values()):
            torch.testing.assert_close(a.cpu(), b, msg=f"{key}.{name}")
    cpu.train_step(_batch(2, 64, "cpu"))
    save_checkpoint(tmp_path / "cpu_run", cpu.checkpoint_payload(), step=cpu.state.step)
    back = Trainer(cfg, CUDA)
    back.restore(load_checkpoint(tmp_path / "cpu_run" / "checkpoints" / "last.pt", map_location="cpu"))
    assert back.state.step == 2 and next(back.nets["g1"].parameters()).device.type == "cuda"
    back.train_step(_batch(2, 64, CUDA))  # the optimiser state moved too: the step runs


@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_inference_equals_cpu_inference(tmp_path, bf16):
    torch.manual_seed(0)
    cfg = ModelConfig.landsat_cpu()
    nets = build_networks(cfg)
    save_inference_bundle(tmp_path / "m", edge_generator=nets["g1"], inpaint_generator=nets["g2"], model_config=cfg)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:420]
    stored = (60 + 40 * np.sin(xx / 17.0) + 30 * np.cos(yy / 23.0) + rng.normal(0, 3, (3, 300, 420))).clip(1, 255).astype(np.uint8)
    hole = np.zeros((300, 420), bool)
    hole[:, 200:212] = True
    to_unit = lambda v: v.astype(np.float32) / 255.0  # noqa: E731
    cpu = inpaint_array(stored, hole, model_fill_fn(load_inference_bundle(tmp_path / "m"), "cpu"), to_unit,
                        tiling=TilingConfig(batch_size=4))
    gpu = inpaint_array(stored, hole, model_fill_fn(load_inference_bundle(tmp_path / "m", "cuda"), "cuda", bf16=bf16),
                        to_unit, tiling=TilingConfig(batch_size=32))
    err = np.abs(cpu - gpu)[:, hole]
    assert err.max() < (2e-2 if bf16 else 1e-4), err.max()
    assert (cpu[:, ~hole] == gpu[:, ~hole]).all()

"""Training on real patches: learning, outputs, stage switching, NaN guard, bad input.

The learning tests' verdicts do not depend on the machine. Each run is seeded
(``TrainConfig.seed``), single-threaded (``single_thread``) and uses torch's deterministic
kernels where it has them (``TrainConfig.deterministic`` / ``deterministic_torch``:
``torch.use_deterministic_algorithms(True, warn_only=True)``), so a machine repeats its own
result. Another CPU (instruction set, oneDNN/MKL kernels) or another torch/numpy version still
rounds differently, and a short GAN run amplifies that like a change of seed; so each learning
test asserts a quantity that 3 seeds (0, 1, 2) all clear by at least 3 times their spread, with
the values in its docstring, and :func:`test_trainers_that_do_not_update_fail_the_learning_criteria`
shows the same criteria reject a run whose learning rate is 0. Failure messages print the
measured value beside the threshold."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, load_inference_bundle, save_inference_bundle
from models.config import ModelConfig
from models.networks import build_networks
from models.reporting import read_history
from models.train import train
from models.trainer import TrainingDivergedError
from models_support import tiny_cfg

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = pytest.mark.usefixtures("single_thread")
from pipeline.store import StoreError


def test_short_real_run_writes_the_run_dir(trained_run):
    run_dir, summary = trained_run
    assert summary.steps == 30 and summary.status == "completed"
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["model_config"]["train"]["mode"] == "joint" and meta["data_version"] == summary.data_version
    assert meta["edge_params"]["sigma"] > 0 and meta["radiometry"]["dtype"] == "uint8"
    assert any("perceptual and style losses are OFF" in w for w in meta["warnings"])
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ckpt["step"] == 30 and set(ckpt["models"]) == {"g1", "g2", "d1", "d2"} and "optimizers" in ckpt
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt")) == ["step-10.pt", "step-20.pt", "step-30.pt"]
    assert [h["step"] for h in read_history(run_dir)] == list(range(1, 31))
    # TensorBoard holds every logged scalar at every logged step, the values of history.jsonl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = read_history(run_dir)
    tb = EventAccumulator(str(run_dir / "tb"))
    tb.Reload()
    logged = {k for h in history for k in h} - {"step", "stage", "epoch", "seconds"}
    seconds = [h["seconds"] for h in history]  # the run's wall time at each step
    assert all(b >= a for a, b in zip(seconds, seconds[1:])) and 0 < seconds[-1] <= summary.train_seconds + 0.005
    assert {"g1", "d1", "g2", "d2"} <= logged and set(tb.Tags()["scalars"]) == logged
    for tag in logged:
        expected = [(h["step"], h[tag]) for h in history if tag in h]
        events = [(e.step, e.value) for e in tb.Scalars(tag)]
        assert [s for s, _ in events] == [s for s, _ in expected], tag
        np.testing.assert_allclose([v for _, v in events], [v for _, v in expected], rtol=1e-6, err_msg=tag)
    assert (run_dir / "samples" / "step-30.png").stat().st_size > 1000
    from PIL import Image

    with Image.open(run_dir / "samples" / "losses.png") as plot:  # one panel per loss curve, 80 dpi
        assert plot.format == "PNG" and plot.height == 224
        panels = len([k for k in ("g1", "d1", "g2", "d2", "hole_l1", "edge_mape", "val_hole_psnr", "val_edge_mape")
                      if k in logged])
        assert panels >= 4 and plot.width == int(3.2 * 80 * panels)
        pixels = np.asarray(plot.convert("L"))
    assert len(np.unique(pixels)) > 20 and (pixels < 128).mean() > 0.005  # drawn curves and labels, not a blank page
    metrics = json.loads((run_dir / "metrics.json").read_text())["training"]
    assert metrics["held_out_end"]["hole_l1"] == pytest.approx(summary.held_out_end["hole_l1"])
    bundle = load_inference_bundle(run_dir)
    assert not bundle.edge_generator.training and bundle.patch_size == 256


@pytest.fixture(scope="module")
def slc_store(real_store_template, tmp_path_factory):
    """The real store prepared with Landsat 7 scan-gap training masks (thin gaps whose edges a
    short run can learn to continue); validation scored on its SLC-off pairs."""
    import shutil

    from pipeline.pairings import PairingConfig
    from pipeline.prepare import PrepareConfig, prepare_store
    from prepare_helpers import small_mask_config

    path = tmp_path_factory.mktemp("slc") / "real.zarr"
    shutil.copytree(real_store_template, path)
    prepare_store(path, PrepareConfig(masks=small_mask_config(), pairings=PairingConfig(
        kind_weights={"slc_off": 1.0}, eval_pairs_per_bin=2, eval_kinds=["slc_off", "irregular"])))
    return path


def _validation_records(store, run_dir, methods=("model",)):
    from models.evaluate import ModelFill, score_pairs, select_pairs
    from pipeline.dataset import EvalPairs

    ds = EvalPairs(store, "validation")
    keep = [i for i in select_pairs(ds, 2) if ds.mask_kind[ds.pairings[i, 1]] == "slc_off"]
    return ds, keep, score_pairs(ds, keep, ModelFill.load(run_dir), methods)


# --- G1: 300 steps stop the untrained G1's flood of edges (validation edge MAPE, end / start)
G1_STEPS = 300
G1_MAX_MAPE_RATIO = 0.02


def _g1_cfg(max_steps: int = G1_STEPS, **train_kw) -> ModelConfig:
    train_kw = {"lr_g": 5e-4, "lr_d": 5e-5, **train_kw}
    cfg = tiny_cfg(mode="edge", max_steps=max_steps, batch_size=8, crop_size=64, betas=(0.5, 0.999), log_every=50,
                   checkpoint_every=1000, deterministic=True, **train_kw)
    return cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"max_stage1_epochs": 10_000,
                                                                              "mape_patches": 8})})


def _g1_mape_ratio(summary) -> tuple[float, float]:
    """(validation edge MAPE after training / before it, before it) on the run's 8 held-out pairs."""
    start = summary.held_out_start["edge_mape"]
    return summary.held_out_end["edge_mape"] / start, start


@pytest.mark.slow
@pytest.mark.usefixtures("deterministic_torch")
def test_g1_learns_that_edges_in_a_hole_are_sparse(slc_store, tmp_path):
    """300 steps of G1 on real patches. An untrained G1 floods the hole with edges: validation
    tolerant edge MAPE 198 / 204 / 133 (seeds 0 / 1 / 2, 8 held-out pairs). Trained, it is down to
    1.0 / 1.0 / 0.98, i.e. end / start = 0.0051 / 0.0049 / 0.0074 (spread 0.0025): asserted
    end / start < 0.02 (margin 0.0126 = 5 x the spread; lr 0 scores 1.02, negated gradients 1.20).

    Not asserted, because 300 steps do not reliably learn it: that G1 finds more true edges than it
    invents (MAPE < 1, the all-zero map's score) or where they run. On the scan-gap validation pairs
    its MAPE was 1.0 / 1.0 / 0.975 and its edge F1 0 / 0 / 0.12 after 300 steps (150 steps:
    0.92 / 0.94 / 1.01, F1 0.20 / 0.13 / 0; 600 steps: 1.005 / 1.0 / 0.96, F1 0.29 / 0.15 / 0.31);
    one machine with the newest dependencies scored 1.22. Such short GAN runs learn the sparsity
    of edges first; where edges continue comes and goes from one hundred steps to the next."""
    summary = train(slc_store, tmp_path / "g1", _g1_cfg(), progress=False)
    ratio, start = _g1_mape_ratio(summary)
    assert start > 50, f"untrained G1's validation edge MAPE {start:.1f}: expected a flood of edges (> 50)"
    assert ratio < G1_MAX_MAPE_RATIO, (f"validation edge MAPE {summary.held_out_end['edge_mape']:.3f} = {ratio:.4f} "
                                       f"x the untrained G1's {start:.1f} vs threshold {G1_MAX_MAPE_RATIO}")


# --- G2: 150 joint steps of the demo recipe beat G2's own prefill on validation (hole L1 ratio)
G2_STEPS = 150
G2_MAX_L1_RATIO = 0.996


def _g2_cfg(max_steps: int = G2_STEPS, **train_kw) -> ModelConfig:
    train_kw = {"lr_g": 5e-4, "lr_d": 5e-5, **train_kw}
    return ModelConfig.demo(max_steps=max_steps, batch_size=8, crop_size=64, log_every=50, checkpoint_every=1000,
                            sample_every=1000, deterministic=True, **train_kw)


def _g2_l1_ratio(store, run_dir) -> float:
    """Mean validation hole L1 of the model / of the harmonic prefill, on the same scan-gap pairs."""
    _, _, records = _validation_records(store, run_dir, ("model", "harmonic"))
    l1 = {m: np.mean([r["hole_l1"] for r in records if r["method"] == m]) for m in ("model", "harmonic")}
    return float(l1["model"] / l1["harmonic"])


@pytest.mark.slow
@pytest.mark.usefixtures("deterministic_torch")
def test_g2_learns_beyond_its_prefill_on_validation(slc_store, tmp_path):
    """150 joint steps of the demo recipe (tiny; G2 = harmonic prefill + a learned residual that
    starts at 0, so an untrained G2 IS the prefill: ratio 1.000). The prefill is the baseline, not
    the mean colour: the prefill alone is 0.47-0.78 of the mean colour's hole L1 on the shipped model's test pairs, so beating the
    mean colour says nothing about learning.

    Validation hole L1 of the model / of the prefill on the scan-gap pairs: 0.9903 / 0.9914 /
    0.9916 (seeds 0 / 1 / 2; spread 0.0013); asserted < 0.996 (margin 0.0044 = 3.4 x the spread;
    the prefill's 1.000 is 3 x the spread above it). Measured, not asserted: 300 steps are no
    better (0.9908 / 0.9911 / 0.9854, spread 0.0057); on the samples it trained on (the last 4
    epochs' crops) the ratio is 0.955 / 0.970 / 0.964 - further from 1 but too spread (0.015)
    for a threshold 3 spreads from the seeds and below 1. In PSNR the gain is about 0 dB (G2
    trains on L1): a short CPU run shaves ~1 % off the prefill's L1 and no more."""
    train(slc_store, tmp_path / "g2", _g2_cfg(), progress=False)
    ratio = _g2_l1_ratio(slc_store, tmp_path / "g2")
    assert ratio < G2_MAX_L1_RATIO, f"validation hole L1 / prefill's {ratio:.4f} vs threshold {G2_MAX_L1_RATIO}"


@pytest.mark.usefixtures("deterministic_torch")
def test_trainers_that_do_not_update_fail_the_learning_criteria(slc_store, tmp_path):
    """The two learning criteria above reject runs with learning rate 0 (a few steps suffice: the
    weights never move; measured: G1's MAPE ratio 1.02, G2's hole-L1 ratio 1.000). Runs that ascend
    their losses instead (gradients negated, the full step counts, seed 0) were measured once: G1's
    MAPE ratio 1.20, G2's hole-L1 ratio 41 - both fail too."""
    g1 = train(slc_store, tmp_path / "g1", _g1_cfg(max_steps=10, lr_g=0.0, lr_d=0.0), progress=False)
    ratio, start = _g1_mape_ratio(g1)
    assert not ratio < G1_MAX_MAPE_RATIO, f"G1 with lr 0: MAPE ratio {ratio:.4f} (of {start:.1f}) passed"
    train(slc_store, tmp_path / "g2", _g2_cfg(max_steps=10, lr_g=0.0, lr_d=0.0), progress=False)
    ratio = _g2_l1_ratio(slc_store, tmp_path / "g2")
    assert ratio == pytest.approx(1.0, abs=1e-4) and not ratio < G2_MAX_L1_RATIO, f"G2 with lr 0: ratio {ratio:.5f}"


class _LossSpy:
    """Records what the G1 losses and D1 receive, in call order (the losses' inputs, not flags)."""

    def __init__(self, monkeypatch):
        import models.trainer as tr
        from models.networks import Discriminator

        self.kinds, self.norms, self.d1_inputs, self.masks = [], [], [], []
        gan, fm, forward = tr.gan_loss, tr.feature_matching_loss, Discriminator.forward
        disc = tr.discriminator_loss

        def gan_spy(logits, real, kind):
            self.kinds.append(("G", kind))
            return gan(logits, real, kind)

        def disc_spy(d_real, d_fake, kind):
            self.kinds.append(("D", kind))
            return disc(d_real, d_fake, kind)

        def fm_spy(real, fake, norm="l1"):
            self.norms.append(norm)
            return fm(real, fake, norm)

        edge_step = tr.Trainer.edge_step

        def edge_step_spy(trainer, edges, known, mask):
            self.masks.append(mask.detach().clone())
            return edge_step(trainer, edges, known, mask)

        def forward_spy(d, x):
            if self.masks and x.shape[1] == 1 and x.shape[0] == 2 * len(self.masks[-1]) and len(self.d1_inputs) < len(self.masks):
                self.d1_inputs.append(x.detach().clone())  # D1's update forward: cat([real, fake])
            return forward(d, x)

        monkeypatch.setattr(tr, "gan_loss", gan_spy)
        monkeypatch.setattr(tr, "discriminator_loss", disc_spy)
        monkeypatch.setattr(tr, "feature_matching_loss", fm_spy)
        monkeypatch.setattr(tr.Trainer, "edge_step", edge_step_spy)
        monkeypatch.setattr(Discriminator, "forward", forward_spy)

    def check_stages(self, switch_step: int, steps: int) -> None:
        assert len(self.norms) == len(self.masks) == steps
        assert self.kinds == [("D", "l1"), ("G", "l1")] * switch_step + [("D", "l2"), ("G", "l2")] * (steps - switch_step)
        assert self.norms == ["l1"] * switch_step + ["l2"] * (steps - switch_step)
        for step, (x, mask) in enumerate(zip(self.d1_inputs, self.masks), start=1):
            outside = x * (1 - torch.cat([mask, mask]))
            if step <= switch_step:   # stage 1: whole edge maps (true edges exist outside the hole)
                assert outside[: len(mask)].sum() > 0, step
            else:                     # stage 2: D1 sees edge * M and gen * M only
                assert outside.abs().sum() == 0 and x.sum() > 0, step


def test_stage_2_by_validation_mape_then_l2_terms_on_the_hole(prepared_store, tmp_path, monkeypatch):
    spy = _LossSpy(monkeypatch)
    cfg = tiny_cfg(mode="edge", max_steps=4, checkpoint_every=10)
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"mape_threshold": 1e9, "mape_every": 2})})
    summary = train(prepared_store, tmp_path / "run", cfg, progress=False)
    assert summary.stage == 2 and summary.stage_switch_step == 2
    assert "validation edge MAPE" in summary.events[0]
    assert [h["stage"] for h in read_history(tmp_path / "run")] == [1, 2, 2, 2]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["stage"] == 2 and ckpt["stage_switch_step"] == 2
    spy.check_stages(switch_step=2, steps=4)


def test_stage_2_after_max_stage1_epochs_of_passes_over_the_images(prepared_store, tmp_path, monkeypatch):
    spy = _LossSpy(monkeypatch)
    cfg = tiny_cfg(mode="edge", max_steps=5, batch_size=2, checkpoint_every=100)
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"mape_threshold": 0.0, "mape_every": 1000,
                                                                              "max_stage1_epochs": 1})})
    summary = train(prepared_store, tmp_path / "run", cfg, progress=False)
    # an epoch = one pass over the 5 train images: ceil(5 / 2) = 3 batches, so the switch follows step 3
    assert summary.stage == 2 and summary.stage_switch_step == 3 and "max_stage1_epochs=1" in summary.events[0]
    spy.check_stages(switch_step=3, steps=5)


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(prepared_store, tmp_path):
    run = tmp_path / "run"
    train(prepared_store, run, tiny_cfg(mode="edge", max_steps=2), progress=False)
    good = load_checkpoint(run / "checkpoints" / "last.pt")
    bad = tiny_cfg(mode="edge", max_steps=4)
    bad = bad.model_copy(update={"losses": bad.losses.model_copy(update={"edge_structure_weight": float("inf")})})
    with pytest.raises(TrainingDivergedError, match=r"G1 loss is (nan|inf) .*at step 3"):
        train(prepared_store, run, bad, progress=False)
    kept = load_checkpoint(run / "checkpoints" / "last.pt")
    assert kept["step"] == 2
    assert all(torch.equal(kept["models"]["g1"][k], good["models"]["g1"][k]) for k in good["models"]["g1"])
    assert json.loads((run / "metrics.json").read_text())["status"].startswith("diverged")


def test_store_without_edges_is_rejected(real_store, tmp_path):
    with pytest.raises(StoreError, match=r"not prepared for training.*edges.*edgefill prepare"):
        train(real_store, tmp_path / "run", tiny_cfg(max_steps=1), progress=False)


def test_checkpoint_from_another_architecture_is_rejected(prepared_store, tmp_path):
    run = tmp_path / "run"
    train(prepared_store, run, tiny_cfg(mode="edge", max_steps=2), progress=False)
    wider = tiny_cfg(mode="edge", max_steps=4).model_copy(update={"base_channels": 8})
    with pytest.raises(CheckpointError, match="another architecture"):
        train(prepared_store, run, wider, progress=False)
    # a run dir whose config claims one architecture but whose weights are another's
    other = tmp_path / "other"
    small = ModelConfig.tiny().model_copy(update={"residual_blocks": 1})
    nets = build_networks(small)
    save_inference_bundle(other, edge_generator=nets["g1"], inpaint_generator=nets["g2"], model_config=small)
    meta = json.loads((other / "config.json").read_text())
    meta["model_config"]["residual_blocks"] = 2
    meta["architecture_hash"] = ModelConfig.tiny().architecture_hash()
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="another architecture"):
        load_inference_bundle(other)


def test_corrupt_or_missing_checkpoint_is_a_clear_error(trained_run, tmp_path):
    import shutil

    run_dir, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    last = copy / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()
    last.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_inference_bundle(copy)
    last.unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_inference_bundle(copy)
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_inference_bundle(tmp_path)


def test_residual_fill_run_starts_at_the_smooth_fill_and_round_trips(prepared_store, tmp_path):
    """The demo's G2 head: an untrained G2 already returns the harmonic fill (held-out hole L1 far
    below the ~0.35 a white-fill G2 starts at on the demo store) and the 5-input G2 reloads."""
    cfg = tiny_cfg(max_steps=2).model_copy(update={"g2_residual_fill": True})
    summary = train(prepared_store, tmp_path / "run", cfg, progress=False)
    assert summary.held_out_start["hole_l1"] < 0.1 and summary.held_out_end["hole_l1"] < 0.1
    bundle = load_inference_bundle(tmp_path / "run")
    assert bundle.model_config.g2_residual_fill and bundle.inpaint_generator.body[1].weight.shape[1] == 5
    json_cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert json_cfg["architecture"]["g2_inputs"] == ["smooth_filled_rgb", "edges", "mask"]


def test_weight_averaging_is_kept_resumed_and_used_for_inference(prepared_store, tmp_path):
    """With ``ema_decay`` the run keeps an average of G1/G2 weights: it differs from the trained
    weights, survives an exact resume, and is what best.pt and the inference bundle carry."""
    cfg = tiny_cfg(mode="joint", max_steps=4, checkpoint_every=2, ema_decay=0.5)
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"mape_every": 2})})
    run = tmp_path / "run"
    train(prepared_store, run, cfg, progress=False)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    key = next(k for k in last["models"]["g2"] if k.endswith("weight"))
    assert not torch.equal(last["ema"]["g2"][key], last["models"]["g2"][key])
    bundle = load_inference_bundle(run)
    assert torch.equal(bundle.inpaint_generator.state_dict()[key], last["ema"]["g2"][key])
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["step"] in (2, 4) and torch.equal(best["models"]["g2"][key], best["ema"]["g2"][key])
    reference = train(prepared_store, tmp_path / "ref", cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 6})}),
                      progress=False)
    resumed = train(prepared_store, run, cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 6})}),
                    progress=False)
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")["ema"]["g2"][key]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["ema"]["g2"][key]
    assert resumed.steps == reference.steps == 6 and torch.allclose(a, b, atol=1e-6)

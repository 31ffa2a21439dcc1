"""Training on real patches: learning, outputs, stage switching, NaN guard, bad input."""
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


def _validation_records(store, run_dir):
    from models.evaluate import ModelFill, score_pairs, select_pairs
    from pipeline.dataset import EvalPairs

    ds = EvalPairs(store, "validation")
    keep = [i for i in select_pairs(ds, 2) if ds.mask_kind[ds.pairings[i, 1]] == "slc_off"]
    return ds, keep, score_pairs(ds, keep, ModelFill.load(run_dir), ("model",))


@pytest.mark.slow
def test_g1_learns_edges_that_beat_an_all_zero_map_on_validation(slc_store, tmp_path):
    """300 steps of G1 on real patches: on validation its edge map finds more true edges than it
    invents (tolerant MAPE < 1, the score of an all-zero map) and its edge F1 beats the all-zero
    map's 0. An untrained G1 floods the hole with edges (MAPE in the hundreds)."""
    from models.evaluate import validation_scores
    from models.metrics import EdgeCounts

    cfg = tiny_cfg(mode="edge", max_steps=300, batch_size=8, crop_size=64, lr_g=5e-4, lr_d=5e-5, betas=(0.5, 0.999),
                   log_every=50, checkpoint_every=1000)
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"max_stage1_epochs": 10_000})})
    summary = train(slc_store, tmp_path / "g1", cfg, progress=False)
    assert summary.held_out_start["edge_mape"] > 10           # untrained: edges everywhere
    ds, keep, records = _validation_records(slc_store, tmp_path / "g1")
    counts = sum((r["edge_counts"] for r in records), EdgeCounts())
    assert validation_scores(records)["edge_mape"] < 1.0      # all-zero map: exactly 1
    assert counts.scores()["edge_f1"] > 0                     # all-zero map: 0


@pytest.mark.slow
def test_g2_learns_beyond_its_prefill_and_beats_the_mean_colour_fill(slc_store, tmp_path):
    """300 joint steps of the shipped recipe (tiny): on the samples it trained on, G2's hole L1
    falls below the harmonic prefill it starts from (a trainer that does not update, or updates
    the wrong way, fails this); on validation it beats the mean-colour fill."""
    from models.checkpoint import load_inference_bundle
    from models.data import collate, epoch_batches
    from models.losses import hole_mean_l1
    from models.networks import edge_connect_forward, smooth_fill
    from pipeline.dataset import TrainingSamples

    cfg = ModelConfig.demo(max_steps=300, batch_size=8, crop_size=64, lr_g=5e-4, lr_d=5e-5, log_every=50,
                           checkpoint_every=1000, sample_every=1000)
    summary = train(slc_store, tmp_path / "g2", cfg, progress=False)
    bundle = load_inference_bundle(tmp_path / "g2")
    samples = TrainingSamples(slc_store, crop_size=64, seed=cfg.train.seed)
    keys = [k for e in range(summary.epochs - 4, summary.epochs) for b in epoch_batches(len(samples), 8, e, cfg.train.seed)
            for k in b]  # the last four epochs' samples
    batch = collate([samples[k] for k in keys])
    with torch.no_grad():
        rgb, _ = edge_connect_forward(bundle.edge_generator, bundle.inpaint_generator, batch["image"],
                                      batch["known_edges"], batch["mask"])
        known = 1 - batch["mask"]
        prefill = smooth_fill(batch["image"] * known, known)
    learned = hole_mean_l1(rgb, batch["image"], batch["mask"]).item()
    assert learned < 0.99 * hole_mean_l1(prefill, batch["image"], batch["mask"]).item()
    ds, keep, records = _validation_records(slc_store, tmp_path / "g2")
    mean_colour = []
    for i in keep:
        stored, hole = ds.stored(i)
        unit = ds.radiometry.to_unit(stored)
        mean_colour.append(np.abs(unit[:, hole] - unit[:, ~hole].mean(axis=1, keepdims=True)).mean())
    assert np.mean([r["hole_l1"] for r in records]) < np.mean(mean_colour)


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

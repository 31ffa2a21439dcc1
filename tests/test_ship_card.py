"""`scripts/ship_model.py RUN_DIR` alone writes the model card: its training facts come from the
run's own records (config.json, history.jsonl, metrics.json), on a tiny real run trained in two
sessions (an interruption and a resume), and a second call writes the same card."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from models.reporting import read_history
from models_support import tiny_cfg

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def _ship_main():
    spec = importlib.util.spec_from_file_location("ship_model", ROOT / "scripts" / "ship_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_ship_script_writes_the_training_facts_from_the_run_records(prepared_store, tmp_path):
    import os

    from models.config import TrainRunConfig
    from models.train import train

    run = tmp_path / "runs" / "tiny"
    cfg = tiny_cfg(mode="joint", max_steps=6)
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"mape_every": 4})})
    train(prepared_store, run, cfg, progress=False)  # a first session, then a resume to step 12
    train(prepared_store, run, cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 12})}),
          progress=False)

    history = read_history(run)
    seconds = [h["seconds"] for h in history]
    assert [h["step"] for h in history] == list(range(1, 13)) and seconds == sorted(seconds)  # over both sessions
    validated = {h["step"]: h["val_hole_psnr"] for h in history if "val_hole_psnr" in h}
    assert sorted(validated) == [4, 8, 12]
    best = max(validated, key=validated.get)
    at_best = next(h for h in history if h["step"] == best)
    training = json.loads((run / "metrics.json").read_text())["training"]
    assert training["train_seconds"] >= seconds[-1] - 0.005 and training["machine"]["cpu_cores"] == os.cpu_count()

    main = _ship_main()
    shipped = tmp_path / "shipped"
    args = [str(run), "--name", "tiny-card-v1", "--pairs-per-bin", "1", "--force", "--dest", str(shipped)]
    assert main(args) == 0
    card = (shipped / "tiny-card-v1" / "MODEL_CARD.md").read_text()
    machine = training["machine"]
    assert f"- machine: {os.cpu_count()}-core {machine['cpu']} CPU, torch threads 1 per process, no GPU" in card
    assert f"- steps: shipped checkpoint `best.pt` at step {best}; trained to step 12 of a constant schedule" in card
    wall = card.split("- wall_time: ")[1].splitlines()[0]
    assert f" to step {best} ({at_best['seconds'] / best:.2f} s/step)" in wall
    assert ("for all 12 steps" in wall) == (best != 12)
    before = training["held_out_start"]["hole_psnr"]
    assert f"- validation: hole PSNR {before:.3f} dB at step 0 -> {validated[best]:.3f} dB at step {best} " in card
    assert "- selection: checkpoints/best.pt = highest validation hole PSNR (2 fixed validation pairs, every 4 steps)" \
        in card
    # the reproduce block: the store as it was made, training from the shipped config, then this script alone
    block = card.split("## Reproduce")[1].split("```")[1]
    assert f"python -m models.train {prepared_store} --set model={shipped}/tiny-card-v1/config.json " \
           f"--out {run}" in block
    assert block.strip().splitlines()[-1] == (f"python scripts/ship_model.py {run} --name tiny-card-v1 --checkpoint "
                                              f"best.pt --dest {shipped} --pairs-per-bin 1 --force")  # an untrained-ish model
    assert f"# {prepared_store}: written by 'test-fixture', not by edgefill export" in block
    assert "--training" not in card
    shipped_config = shipped / "tiny-card-v1" / "config.json"
    assert TrainRunConfig(store=prepared_store, model=str(shipped_config)).resolve() == \
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 12})})
    assert "Trained " in card and "Perceptual and style losses were off in training" in card

    (shipped / "tiny-card-v1" / "MODEL_CARD.md").unlink()
    assert main(args) == 0  # the same command writes the same card
    assert (shipped / "tiny-card-v1" / "MODEL_CARD.md").read_text() == card


def test_ship_script_refuses_a_run_without_records(tmp_path, capsys):
    assert _ship_main()([str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a run directory" in err[0]

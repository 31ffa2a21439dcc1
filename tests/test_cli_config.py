"""One config per stage: its pydantic config is the only place a parameter's default is declared.

Fails if a default differs between a stage's config, the CLI (flags generated from it,
``--print-config``), the Prefect flow (its ``config`` parameter, the schema the UI shows, the
deployments) and the plain functions' keyword defaults; plus how the CLI builds a config
(``--config FILE.yaml`` < flags < ``--set``)."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import STAGES, Stage, app, field_default
from models.config import EvaluateConfig, RetrainConfig, TrainRunConfig
from models.inpaint_scene import InpaintSceneConfig, InpaintScenesConfig
from models.scene_demo import EverestDemoConfig
from pipeline.config_io import ConfigError, load_config
from pipeline.export_config import ExportConfig
from pipeline.prepare import PrepareConfig, PrepareDatasetConfig

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {"inpaint": ["in.tif"]}  # positional fields without a default
STAGE_BY_NAME = {s.name: s for s in STAGES}


def _invoke(args: list[str]):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def _printed(stage: str, *args: str) -> dict:
    return yaml.safe_load(_invoke([stage, *REQUIRED.get(stage, []), *args, "--print-config"]).stdout)


def _required(stage: Stage) -> dict:
    return {"input": "in.tif"} if stage.name == "inpaint" else {}


def test_one_shard_patches_default():
    from pipeline.store import create_store

    assert ExportConfig().shard_patches == 64 == inspect.signature(create_store).parameters["shard_patches"].default
    assert _printed("export")["shard_patches"] == 64


def test_every_stage_command_covers_the_stages():
    assert {s.name: s.config for s in STAGES} == {
        "export": ExportConfig, "prepare": PrepareDatasetConfig, "train": TrainRunConfig,
        "evaluate": EvaluateConfig, "inpaint": InpaintSceneConfig, "inpaint-demo": EverestDemoConfig}


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_cli_without_options_is_the_configs_defaults(stage):
    expected = stage.config(**_required(stage)).model_dump(mode="json")
    assert _printed(stage.name) == expected


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_cli_flags_declare_no_default_of_their_own(stage):
    """Each flag names a real field, defaults to "not given" and shows the config's default."""
    import typer.main

    command = typer.main.get_command(app).commands[stage.name]
    params = {p.name: p for p in command.params}
    for i, flag in enumerate(stage.flags):
        _, default = field_default(stage.config, flag.field)  # raises if the field does not exist
        param = params[f"flag_{i}"]
        assert param.default in (None, ()), (flag, param.default)
        if default is not None and repr(default) != "PydanticUndefined":
            shown = ("true" if default else "false") if isinstance(default, bool) else str(default)
            assert f"(default: {shown})" in (param.help or ""), (flag, param.help)


FLOW_CONFIGS = [("flows.export", "export_landsat_flow", ExportConfig),
                ("flows.prepare", "prepare_dataset_flow", PrepareDatasetConfig),
                ("flows.train", "train_model_flow", TrainRunConfig),
                ("flows.train", "retrain_model_flow", RetrainConfig)]


@pytest.mark.parametrize("module, name, cls", FLOW_CONFIGS, ids=[f[1] for f in FLOW_CONFIGS])
def test_flow_takes_the_config_with_its_defaults(module, name, cls):
    import importlib

    flow = getattr(importlib.import_module(module), name)
    params = inspect.signature(flow.fn).parameters
    assert params["config"].annotation in (cls, cls.__name__) and params["config"].default == cls()
    assert flow.parameters.properties["config"]["default"] == cls().model_dump(mode="json")  # what the UI shows


def test_deployments_change_no_config_default():
    from flows.serve import collect_deployments

    classes = {"export-landsat": ExportConfig, "prepare-dataset": PrepareDatasetConfig,
               "train-model": TrainRunConfig, "retrain-model": RetrainConfig}
    deployments = collect_deployments()
    assert {(d.flow_name, d.name) for d in deployments} >= {
        ("export-landsat", "default"), ("prepare-dataset", "default"), ("train-model", "default"),
        ("retrain-model", "nightly"), ("inpaint-scene", "default"), ("inpaint-scene", "everest-demo"),
        ("inpaint-scenes", "default")}
    for d in deployments:
        if d.flow_name in classes:
            cls = classes[d.flow_name]
            assert cls.model_validate(d.parameters.get("config", {})) == cls(), (d.flow_name, d.name)
        else:
            assert "config" not in d.parameters and "demo" not in d.parameters, (d.flow_name, d.name)


def test_inpaint_flows_take_the_inpaint_configs():
    from flows.inpaint import inpaint_scene_flow, inpaint_scenes_flow

    params = inspect.signature(inpaint_scene_flow.fn).parameters
    assert params["config"].default is None and params["demo"].default == EverestDemoConfig()
    assert inpaint_scene_flow.parameters.properties["demo"]["default"] == EverestDemoConfig().model_dump(mode="json")
    assert "InpaintScenesConfig" in str(inspect.signature(inpaint_scenes_flow.fn).parameters["config"].annotation)
    scenes = InpaintScenesConfig(inputs=["a/x.tif"], output_dir="out", mask={"kind": "slc_off"})
    (job,) = scenes.jobs()
    assert job == InpaintSceneConfig(input="a/x.tif", output="out/x_inpainted.tif", mask={"kind": "slc_off"})
    assert InpaintSceneConfig(input="a/x.tif").output == Path("a/x_inpainted.tif")


def test_plain_functions_defaults_are_the_configs():
    from models.evaluate import evaluate
    from models.promotion import train_and_register
    from models.scene_demo import run_everest_demo
    from models.train import train
    from pipeline.prepare import prepare_store

    ev, cfg = inspect.signature(evaluate).parameters, EvaluateConfig()
    assert (ev["model"].default, ev["pairs_per_bin"].default, ev["split"].default, ev["device"].default) == \
        (cfg.model, cfg.pairs_per_bin, cfg.split, cfg.device)
    tr, run = inspect.signature(train).parameters, TrainRunConfig()
    assert (tr["resume"].default, tr["init_from"].default, tr["device"].default, tr["progress"].default) == \
        (run.resume, run.init_from, run.device, run.progress)
    demo, dcfg = inspect.signature(run_everest_demo).parameters, EverestDemoConfig()
    assert (demo["model"].default, Path(demo["out_dir"].default), demo["device"].default,
            demo["pictures_dir"].default) == (dcfg.model, dcfg.out_dir, dcfg.device, dcfg.pictures_dir)
    ps = inspect.signature(prepare_store).parameters
    assert ps["config"].default == PrepareConfig() == PrepareDatasetConfig().prepare_config()
    assert ps["dask"].default == PrepareDatasetConfig().dask
    from flows.train import train_model_flow

    assert inspect.signature(train_and_register).parameters["pairs_per_bin"].default == \
        inspect.signature(train_model_flow.fn).parameters["pairs_per_bin"].default


def test_config_file_then_flags_then_set(tmp_path):
    f = tmp_path / "export.yaml"
    f.write_text("out: from-file.zarr\nseed: 5\ncount: 7\nend: 2003-01-01\nshard_patches: 8\n")
    got = _printed("export", "--config", str(f), "--seed", "6", "--set", "count=9", "--set", "max_attempts=2")
    assert (got["out"], got["seed"], got["count"], got["end"], got["shard_patches"], got["max_attempts"]) == \
        ("from-file.zarr", 6, 9, "2003-01-01", 8, 2)
    prep = _printed("prepare", "S.zarr", "--workers", "3", "--seed", "4", "--set", "dask.threads_per_worker=1")
    assert prep["dask"] == {**PrepareDatasetConfig().dask.model_dump(mode="json"), "n_workers": 3,
                            "threads_per_worker": 1}
    assert prep["store"] == "S.zarr" and prep["masks"]["seed"] == prep["pairings"]["seed"] == 4  # one seed
    inp = _printed("inpaint", "--qa", "qa.tif", "--qa-kind", "c1_bqa", "--dilate", "2", "--bands", "3,2,1")
    assert inp["mask"]["kind"] == "qa" and inp["mask"]["path"] == "qa.tif" and inp["mask"]["dilate"] == 2
    assert inp["bands"] == [3, 2, 1] and inp["output"] == "in_inpainted.tif"


def test_train_takes_a_preset_or_a_file_and_model_overrides(tmp_path):
    got = _printed("train", "S.zarr", "--config", "full", "--out", "R", "--max-steps", "3", "--no-resume",
                   "--set", "train.compile=true", "--set", "nproc=2")
    assert (got["store"], got["out"], got["model"], got["max_steps"], got["resume"], got["nproc"]) == \
        ("S.zarr", "R", "full", 3, False, 2)
    assert got["overrides"] == ["train.compile=true"]
    assert TrainRunConfig.model_validate(got).resolve().train.compile is True
    f = tmp_path / "run.yaml"
    f.write_text("model: tiny\noverrides: [schedule.mape_every=3]\n")
    got = _printed("train", "--config", str(f), "--set", "train.log_every=1")
    assert got["model"] == "tiny" and got["overrides"] == ["schedule.mape_every=3", "train.log_every=1"]
    assert _printed("train")["model"] == "demo"


@pytest.mark.parametrize("args, message", [
    (["export", "--count", "0"], "--count: count must be a positive"),
    (["export", "--source", "gee"], "--source must be 'local' or 'earthengine', got 'gee'"),
    (["export", "--set", "shard_patchez=8"], "unknown config key 'shard_patchez'"),
    (["prepare", "--set", "masks.typo=1"], "unknown config key 'masks.typo'"),
    (["prepare", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["train", "--config", "huge"], "unknown model config preset 'huge'"),
    (["inpaint", "in.tif", "--slc-off", "--mask", "m.tif"], "choose one mask source"),
])
def test_bad_config_input_is_one_error_line_and_exit_2(args, message):
    res = CliRunner().invoke(app, [*args, "--print-config"])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_load_config_refuses_unknown_file_keys(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("dask:\n  n_workerz: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'dask.n_workerz'"):
        load_config(PrepareDatasetConfig, file=f)


@pytest.mark.slow  # a subprocess
def test_python_m_models_train_is_the_cli_train_command(tmp_path):
    """The documented torchrun form parses through the same command (``--print-config``: no training)."""
    res = subprocess.run([sys.executable, "-m", "models.train", "S.zarr", "--config", "full", "--out", "RUN",
                          "--print-config"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout) == TrainRunConfig(store="S.zarr", out="RUN", model="full").model_dump(mode="json")


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_printed_config_is_a_config_file(stage, tmp_path):
    """``--print-config`` writes what ``--config`` reads back unchanged."""
    printed = _invoke([stage.name, *REQUIRED.get(stage.name, []), "--print-config"]).stdout
    f = tmp_path / "stage.yaml"
    f.write_text(printed)
    assert _invoke([stage.name, "--config", str(f), "--print-config"]).stdout == printed


def test_launch_training_hands_the_ranks_the_whole_config(tmp_path, monkeypatch):
    """nproc > 1: the run config goes to RUN_DIR/train_config.json; each rank's command line (what
    torchrun starts: ``python -m models.train STORE --out RUN --no-progress --config FILE``) parses
    to that config with nproc 1."""
    import models.ddp as ddp

    seen = {}
    monkeypatch.setattr(ddp, "launch_torchrun", lambda store, out, nproc, args, **kw: seen.update(
        store=store, out=out, nproc=nproc, args=args))
    monkeypatch.chdir(tmp_path)
    cfg = TrainRunConfig(store="S.zarr", out="runs/r", model="tiny", nproc=2, max_steps=3,
                         overrides=["train.log_every=1"])
    ddp.launch_training(cfg)
    assert seen["nproc"] == 2 and seen["out"] == tmp_path / "runs" / "r" and seen["store"] == tmp_path / "S.zarr"
    cmd = ddp.torchrun_command(seen["store"], seen["out"], seen["nproc"], seen["args"])
    rank_args = cmd[cmd.index("models.train") + 1:]
    got = TrainRunConfig.model_validate(_printed("train", *rank_args))
    assert got == cfg.model_copy(update={"store": tmp_path / "S.zarr", "out": tmp_path / "runs" / "r", "nproc": 1,
                                         "progress": False})

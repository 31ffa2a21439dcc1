"""The ``edgefill`` command line - the project's one CLI (console script ``edgefill = flows.cli:app``).

Stage commands (``export``, ``prepare``, ``train``, ``evaluate``, ``inpaint``, ``inpaint-demo``)
build their stage's pydantic config and call the same plain function as the Prefect flow:

    the config's defaults  <  --config FILE.yaml  <  flags  <  --set KEY=VALUE

- ``--config FILE.yaml``: any of the config's fields (YAML or JSON; nested sections as mappings).
  ``train`` also takes a preset name there (``--config full``).
- flags: the common fields, GENERATED from the config (:data:`STAGES`): name, type, help text and
  the default shown all come from the pydantic field, so no default is written twice
  (tests/test_cli_config.py checks the configs, the CLI, the flows and the deployments agree).
- ``--set KEY=VALUE`` (repeatable): any field, dotted for nested ones (``--set dask.n_workers=4``);
  VALUE is read as YAML (``--set aois=[a.geojson,b.geojson]``, ``--set count=null``). For
  ``train``, a KEY that is not a run field is a model-config override (``--set train.compile=true``).
- ``--print-config``: print the resolved config as YAML and exit (a starting point for a file).

Service commands: ``serve`` (every deployment, :mod:`flows.serve`) and ``wait-for-deployments``.
``python -m models.train`` (torchrun's ranks) is ``edgefill train``; ``python -m flows.serve`` is
``edgefill serve``. Bad input: exit code 2 and one line ``error: ...`` on stderr.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Literal, Optional, Union

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from models.config import PRESETS, EvaluateConfig, TrainRunConfig
from models.inpaint_scene import InpaintSceneConfig
from models.scene_demo import EverestDemoConfig
from pipeline.config_io import ConfigError, describe_validation_error, dump_config, load_config
from pipeline.export_config import ExportConfig
from pipeline.prepare import PrepareDatasetConfig
from pipeline.raster_io import parse_bands
from pipeline.scene_masks import mask_shortcut

app = typer.Typer(help="Edge-guided GAN inpainting of Landsat imagery.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


# ----------------------------------------------------------------------------- options from configs

@dataclass(frozen=True)
class Flag:
    """A CLI option (or positional ``argument``) for one field of a stage config."""

    field: str  #: dotted path in the config
    name: str | None = None  #: option name without dashes; default: the field's last part, ``_`` -> ``-``
    argument: bool = False
    parse: Callable[[str], Any] | None = None  #: the option is text, parsed into the field's value
    help: str | None = None  #: default: the field's description

    @property
    def option(self) -> str:
        return self.name or self.field.split(".")[-1].replace("_", "-")


@dataclass(frozen=True)
class Stage:
    """One stage command: its config, the flags generated from it and what it runs."""

    name: str
    config: type[BaseModel]
    flags: tuple[Flag, ...]
    run: Callable[[Any, dict], None]  #: (config, extra options) -> prints the result
    help: str
    errors: Callable[[], tuple[type[BaseException], ...]] = lambda: (ValueError,)
    extras: tuple[inspect.Parameter, ...] = ()  #: options that are not config fields
    extra_values: Callable[[dict], dict] | None = None  #: extras -> {dotted field: value}
    presets: tuple[str, ...] = ()  #: ``--config NAME`` = ``--set <preset_field>=NAME``
    preset_field: str | None = None
    other_keys_to: str | None = None  #: see :func:`pipeline.config_io.load_config`


def field_default(cls: type[BaseModel], dotted: str) -> tuple[Any, Any]:
    """(annotation, effective default) of a dotted field; the default is ``PydanticUndefined`` if required."""
    node: Any = cls
    default: Any = PydanticUndefined
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        info = node.model_fields[part]
        if i == 0 or default is PydanticUndefined:
            default = info.get_default(call_default_factory=True)
        else:
            default = getattr(default, part)
        if i < len(parts) - 1:
            node = next(a for a in _union_args(info.annotation) if isinstance(a, type) and issubclass(a, BaseModel))
    return info.annotation, default


def _union_args(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def cli_type(annotation: Any) -> Any:
    """The click-friendly type of a field: bool, int, float, str, Path (Literal -> str), or a List of one."""
    args = [a for a in _union_args(annotation) if a is not type(None)]
    if len(args) != 1:
        raise TypeError(f"no CLI type for {annotation!r}; give the flag a parse function")
    (t,) = args
    if typing.get_origin(t) is Literal:
        return str
    if typing.get_origin(t) is list:
        return List[cli_type(typing.get_args(t)[0])]
    if t in (bool, int, float, str):
        return t
    if isinstance(t, type) and issubclass(t, Path):
        return Path
    raise TypeError(f"no CLI type for {annotation!r}; give the flag a parse function")


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def flag_parameter(stage: Stage, index: int, flag: Flag) -> inspect.Parameter:
    """The typer parameter of one flag: type and help from the config field; default None (= the config's)."""
    annotation, default = field_default(stage.config, flag.field)
    info = field_info(stage.config, flag.field)
    kind = str if flag.parse else cli_type(annotation)
    text = flag.help or info.description or ""
    if default is not PydanticUndefined and default is not None:
        text += f" (default: {_shown(default)})"
    name = flag.option
    choices = [typing.get_args(a) for a in _union_args(annotation) if typing.get_origin(a) is Literal]
    metavar = "|".join(choices[0]) if choices else ("FILE" if kind == List[Path] else None)
    if flag.argument:
        param = typer.Argument(None, help=text, show_default=False, metavar=flag.field.split(".")[-1].upper())
    elif kind is bool:
        param = typer.Option(None, f"--{name}/--no-{name}", help=text, show_default=False)
    else:
        param = typer.Option(None, f"--{name}", help=text, show_default=False, metavar=metavar)
    return inspect.Parameter(f"flag_{index}", inspect.Parameter.KEYWORD_ONLY, default=param,
                             annotation=Optional[kind])


def field_info(cls: type[BaseModel], dotted: str):
    node: Any = cls
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = next(a for a in _union_args(node.model_fields[part].annotation)
                    if isinstance(a, type) and issubclass(a, BaseModel))
    return node.model_fields[parts[-1]]


def _error(exc: BaseException, names: dict[str, str]) -> typer.Exit:
    if isinstance(exc, ValidationError):
        text = describe_validation_error(exc, names)
    elif isinstance(exc, RuntimeError):
        text = str(exc)  # e.g. torchrun's output tail: keep its lines
    else:
        text = " ".join(str(exc).split())
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _is_file_arg(value: str) -> bool:
    return Path(value).suffix.lower() in (".yaml", ".yml", ".json") or Path(value).is_file()


def build_stage_config(stage: Stage, *, config: str | None = None, values: dict | None = None,
                       sets: list[str] | tuple[str, ...] = ()) -> BaseModel:
    """The stage's config from ``--config`` (a file, or for train a preset), flag ``values`` and ``--set``."""
    values = dict(values or {})
    if config is not None and stage.preset_field and not _is_file_arg(config):
        values = {stage.preset_field: config, **values}
        config = None
    return load_config(stage.config, file=config, values=values, sets=sets, other_keys_to=stage.other_keys_to)


def register(stage: Stage) -> None:
    """Add ``stage`` as a command of :data:`app` with options generated from its config."""
    flags = stage.flags
    names = {f.field: (f.option.upper() if f.argument else f"--{f.option}") for f in flags}
    config_help = f"YAML/JSON file of {stage.config.__name__} fields (flags and --set apply on top)"
    sets_help = "any config field, dotted for nested ones; VALUE is YAML"
    if stage.presets:
        preset = field_default(stage.config, stage.preset_field)[1]
        config_help = f"a preset ({' | '.join(stage.presets)}; default: {preset}) or a " + config_help
    if stage.other_keys_to:
        sets_help += f"; a KEY that is not a {stage.config.__name__} field goes to {stage.other_keys_to} " \
                     "(e.g. train.compile=true)"
    params = [flag_parameter(stage, i, f) for i, f in enumerate(flags)]
    params += list(stage.extras)
    params += [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                          default=typer.Option(None, "--config", help=config_help, show_default=False)),
        inspect.Parameter("sets", inspect.Parameter.KEYWORD_ONLY, annotation=List[str],
                          default=typer.Option([], "--set", metavar="KEY=VALUE", show_default=False,
                                               help=sets_help)),
        inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--print-config", help="print the resolved config (YAML) "
                                               "and exit")),
    ]

    def command(**kw: Any) -> None:
        extras = {p.name: kw[p.name] for p in stage.extras}
        try:
            values = {}
            for i, f in enumerate(flags):
                value = kw[f"flag_{i}"]
                if value is None or (isinstance(value, (list, tuple)) and not value):
                    continue
                values[f.field] = f.parse(value) if f.parse else value
            if stage.extra_values is not None:
                values.update(stage.extra_values(extras))
            cfg = build_stage_config(stage, config=kw["config"], values=values, sets=kw["sets"])
        except (ValidationError, ConfigError, ValueError) as exc:
            raise _error(exc, names) from exc
        if kw["print_config"]:
            typer.echo(dump_config(cfg), nl=False)
            return
        try:
            stage.run(cfg, extras)
        except (ValidationError, *stage.errors()) as exc:
            raise _error(exc, names) from exc

    command.__signature__ = inspect.Signature(params)  # what typer reads
    command.__doc__ = stage.help
    command.__name__ = stage.name.replace("-", "_")
    app.command(stage.name)(command)


def _option(name: str, flag: str, annotation: Any, help: str) -> inspect.Parameter:
    default = False if annotation is bool else None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation if annotation is bool
                             else Optional[annotation], default=typer.Option(default, flag, help=help))


# ----------------------------------------------------------------------------- what each stage runs

def _run_export(cfg: ExportConfig, extras: dict) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.export import export_landsat

    with Progress(TextColumn("export"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("planning", total=None)

        def progress(done: int, total: int, n_valid: int) -> None:
            bar.update(task, completed=done, total=total, description=f"shards, {n_valid} valid patches")

        summary = export_landsat(cfg, progress=progress)
    typer.echo(json.dumps(summary.model_dump(), indent=2))


def _export_errors() -> tuple:
    from pipeline.sources.base import SourceError

    return ValueError, SourceError, OSError


def _run_prepare(cfg: PrepareDatasetConfig, extras: dict) -> None:
    from pipeline.prepare import prepare_dataset

    typer.echo(json.dumps(prepare_dataset(cfg).model_dump(), indent=2))


def _run_train(cfg: TrainRunConfig, extras: dict) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from models.train import run_training

    summary = {k: v for k, v in run_training(cfg).items() if k != "samples"}
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, rank 0 only
        under_torchrun = "LOCAL_RANK" in os.environ
        typer.echo(json.dumps(summary, default=str, indent=None if under_torchrun else 2))


def _train_errors() -> tuple:
    from models.trainer import TrainingDivergedError

    return ValueError, TrainingDivergedError, RuntimeError


def _run_evaluate(cfg: EvaluateConfig, extras: dict) -> None:
    from models.evaluate import evaluate_run, markdown_table

    result, files = evaluate_run(cfg)
    typer.echo(markdown_table([r for r in result.rows if r["ratio_bin"] == "all"]))
    typer.echo(json.dumps(files))


def _run_inpaint(cfg: InpaintSceneConfig, extras: dict) -> None:
    """Progress on stderr (stdout is the JSON summary): a bar on a terminal, as export's, else a
    line now and then (:class:`models.inference.ProgressLines`)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from models.inference import ProgressLines
    from models.inpaint_scene import inpaint_scene

    def note(text: str) -> None:
        typer.echo(f"note: {text}", err=True)

    console = Console(stderr=True)
    if console.is_terminal:
        with Progress(TextColumn("inpaint"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("tiles", total=None)
            summary = inpaint_scene(cfg, on_note=note,
                                    on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        summary = inpaint_scene(cfg, on_note=note, on_progress=ProgressLines(lambda line: typer.echo(line, err=True)))
    typer.echo(json.dumps(summary.model_dump(mode="json"), indent=2))


def _inpaint_mask(extras: dict) -> dict:
    shortcut = mask_shortcut(extras["mask_raster"], extras["mask_vector"], extras["qa"], extras["slc_off"])
    return {f"mask.{k}": v for k, v in (shortcut or {}).items()}


def _run_inpaint_demo(cfg: EverestDemoConfig, extras: dict) -> None:
    from models.scene_demo import run_everest_demo

    run_everest_demo(cfg.model, cfg.out_dir, device=cfg.device, pictures_dir=cfg.pictures_dir)


#: every stage command: its config and the flags generated from it
STAGES = (
    Stage("export", ExportConfig, (
        Flag("out"), Flag("source"), Flag("count"), Flag("seed"), Flag("shard_patches"), Flag("project"),
        Flag("key"), Flag("aois", name="aoi", help="GeoJSON AOI file (repeatable; default: data_catalog/aois)"),
        Flag("start"), Flag("end"), Flag("product"), Flag("high_volume"), Flag("api_url"), Flag("concurrency"),
        Flag("dataset"), Flag("stride"), Flag("include_holdout")),
        _run_export, "Export real Landsat 256x256 patches into a sharded Zarr store (resumable).",
        errors=_export_errors),
    Stage("prepare", PrepareDatasetConfig, (
        Flag("store", argument=True), Flag("dask.scheduler", name="scheduler"), Flag("seed"),
        Flag("dask.n_workers", name="workers"), Flag("dask.threads_per_worker", name="threads")),
        _run_prepare, "Canny edges (Dask over shards), the mask library and validation/test pairings, into STORE.",
        errors=lambda: (ValueError, OSError)),
    Stage("train", TrainRunConfig, (
        Flag("store", argument=True), Flag("out"), Flag("mode"), Flag("max_steps"), Flag("batch_size"),
        Flag("crop_size"), Flag("nproc"), Flag("resume"), Flag("init_from"), Flag("device"), Flag("progress")),
        _run_train, "Train G1/G2 (EdgeConnect) on STORE into --out; prints a JSON summary.",
        errors=_train_errors, presets=PRESETS, preset_field="model", other_keys_to="overrides"),
    Stage("evaluate", EvaluateConfig, (
        Flag("store", argument=True), Flag("model"), Flag("out"), Flag("pairs_per_bin"), Flag("baselines"),
        Flag("split"), Flag("device")),
        _run_evaluate, "Model vs Telea / Navier-Stokes / GDAL FillNodata / harmonic fill on fixed pairings, "
                       "through the deployment path.",
        errors=lambda: (ValueError, KeyError)),
    Stage("inpaint", InpaintSceneConfig, (
        Flag("input", argument=True), Flag("output", argument=True), Flag("model"),
        Flag("mask.reproject", name="mask-reproject", help="warp --mask onto the scene grid"),
        Flag("mask.qa_kind", name="qa-kind"), Flag("mask.dilate", name="dilate"),
        Flag("bands", parse=parse_bands, help="R,G,B band numbers the model fills, e.g. 3,2,1 (default 1,2,3)"),
        Flag("other_bands"), Flag("zero_is_nodata"), Flag("device"), Flag("batch_size"),
        Flag("references", name="reference", help="a reference acquisition (another date of the same place, any "
             "grid/CRS/sensor); repeat for several: each hole pixel takes the nearest-date one valid there"),
        Flag("reference_bands", parse=parse_bands, help="each reference's bands taken as R,G,B, e.g. 4,3,2 for a "
             "Landsat 8 stack (default: --bands)"),
        Flag("reference_fill")),
        _run_inpaint,
        "Fill a scene's holes (default: its nodata/internal mask) with an edgefill model.\n\n"
        "Every input band is kept. Notes (what was taken as holes, ...) go to stderr, the JSON summary to "
        "stdout; bad input: exit code 2 and one line `error: ...`.",
        extras=(_option("mask_raster", "--mask", Path, "mask raster on the scene grid, nonzero = hole"),
                _option("mask_vector", "--mask-vector", Path, "polygons (any format geopandas reads)"),
                _option("qa", "--qa", Path, "Landsat QA band on the scene grid (cloud+shadow+fill)"),
                _option("slc_off", "--slc-off", bool, "fill detected SLC-off gaps (not edge fill)")),
        extra_values=_inpaint_mask),
    Stage("inpaint-demo", EverestDemoConfig, (Flag("model"), Flag("out_dir"), Flag("device")),
          _run_inpaint_demo, "Everest + a real SLC-off gap pattern: model vs GDAL FillNodata (masked PSNR/SSIM)."),
)

for _stage in STAGES:
    register(_stage)


# ----------------------------------------------------------------------------- services

@app.command("serve")
def serve_cmd(modules: Optional[List[str]] = typer.Argument(None, help="flow modules (default: every one)")) -> None:
    """Serve every deployment (flows.export, flows.prepare, flows.train, flows.inpaint) on PREFECT_API_URL."""
    from flows.serve import FLOW_MODULES, serve_deployments

    serve_deployments(tuple(modules) if modules else FLOW_MODULES)


@app.command("wait-for-deployments")
def wait_for_deployments_cmd(names: List[str] = typer.Argument(..., help="FLOW/DEPLOYMENT names"),
                             timeout: float = typer.Option(120.0, "--timeout", help="seconds")) -> None:
    """Block until the named deployments exist on the Prefect API (scripts/demo.sh, after `edgefill serve &`)."""
    from flows.serve import wait_for_deployments

    try:
        wait_for_deployments(list(names), timeout)
    except TimeoutError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"served: {', '.join(names)}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        app(args=argv, prog_name="edgefill")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `edgefill` command line: export, prepare, train, evaluate, inpaint.

Each area's commands live in ``flows/cli_<area>.py`` and call the same plain functions as the
Prefect flows.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Edge-guided GAN inpainting of Landsat imagery.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)

for _area in ("export", "prepare", "train", "inpaint"):
    try:
        _module = importlib.import_module(f"flows.cli_{_area}")
    except ModuleNotFoundError as exc:  # an area not built yet in this checkout
        if exc.name != f"flows.cli_{_area}":
            raise
        continue
    _module.register(app)

if __name__ == "__main__":
    app()

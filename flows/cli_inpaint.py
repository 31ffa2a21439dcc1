"""``edgefill inpaint`` and ``edgefill inpaint-demo`` (the same plain functions as the flows)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("inpaint")
    def inpaint(
        input: Path = typer.Argument(..., help="input GeoTIFF scene"),
        output: Path = typer.Argument(..., help="output Cloud-Optimized GeoTIFF (.tif; sidecars beside it)"),
        model: str = typer.Option("current", "--model", help="run dir or registry name"),
        mask: Optional[Path] = typer.Option(None, "--mask", help="mask raster on the scene grid, nonzero = hole"),
        mask_reproject: bool = typer.Option(False, "--mask-reproject", help="warp --mask onto the scene grid"),
        mask_vector: Optional[Path] = typer.Option(None, "--mask-vector", help="polygons (any format geopandas reads)"),
        qa: Optional[Path] = typer.Option(None, "--qa", help="Landsat QA band on the scene grid (cloud+shadow+fill)"),
        qa_kind: str = typer.Option("c2_qa_pixel", "--qa-kind", help="c2_qa_pixel | c1_bqa | l8_pre_collection_bqa"),
        slc_off: bool = typer.Option(False, "--slc-off", help="fill detected SLC-off gaps (not edge fill)"),
        dilate: int = typer.Option(0, "--dilate", min=0, help="grow the mask by N pixels"),
        bands: Optional[str] = typer.Option(None, "--bands", help="R,G,B band numbers the model fills, default 1,2,3"),
        other_bands: str = typer.Option("fill", "--other-bands",
                                        help="bands not in --bands: 'fill' (GDAL FillNodata) or 'keep' (holes stay nodata)"),
        zero_is_nodata: bool = typer.Option(True, "--zero-is-nodata/--no-zero-is-nodata",
                                            help="no nodata value and no mask: take DN 0 as fill (Landsat convention)"),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                 help="tiles per model call (default 4 CPU / 32 CUDA)"),
    ) -> None:
        """Fill a scene's holes (default: its nodata/internal mask) with an edgefill model.

        Every input band is kept. Notes (what was taken as holes, ...) go to stderr, the JSON
        summary to stdout; bad input: exit code 2 and one line `error: ...`."""
        from models.inpaint_scene import InpaintSceneConfig, inpaint_scene
        from pipeline.raster_io import parse_bands
        from pipeline.scene_masks import mask_source_from_options

        try:
            source = mask_source_from_options(mask, mask_vector, qa, slc_off, dilate, qa_kind, mask_reproject)
            if other_bands not in ("fill", "keep"):
                raise ValueError(f"--other-bands must be 'fill' or 'keep', got {other_bands!r}")
            cfg = InpaintSceneConfig(input=input, output=output, model=model, mask=source,
                                     bands=parse_bands(bands), device=device, batch_size=batch_size,
                                     zero_is_nodata=zero_is_nodata, other_bands=other_bands)
            summary = inpaint_scene(cfg, on_note=lambda text: typer.echo(f"note: {text}", err=True))
        except ValueError as exc:
            typer.secho(f"error: {' '.join(str(exc).split())}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        typer.echo(json.dumps(summary.model_dump(mode="json"), indent=2))

    @app.command("inpaint-demo")
    def inpaint_demo(
        model: str = typer.Option("current", "--model", help="run dir or registry name"),
        out_dir: Path = typer.Option(Path("demo_out/everest"), "--out-dir"),
        device: str = typer.Option("cpu", "--device"),
    ) -> None:
        """Everest + a real SLC-off gap pattern: model vs GDAL FillNodata (masked PSNR/SSIM)."""
        from models.scene_demo import run_everest_demo

        try:
            run_everest_demo(model, out_dir, device=device)
        except ValueError as exc:
            typer.secho(f"error: {' '.join(str(exc).split())}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc

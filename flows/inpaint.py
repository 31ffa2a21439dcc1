"""Prefect flows for scene inpainting (thin: the work is :func:`models.inpaint_scene.inpaint_scene`).

- ``inpaint-scene``: one scene -> COG + filled mask + quicklook + STAC item (one task), with a
  markdown artifact. With no ``input`` it runs the embedded Everest demo
  (:func:`models.scene_demo.run_everest_demo`) into ``demo_out/everest/`` (summary.md there).
- ``inpaint-scenes``: fans out one ``inpaint-scene`` flow run per scene (a subflow run each,
  or, with ``deployment`` set, one run of that deployment each so served workers share them).

Deployments: ``inpaint-scene/default``, ``inpaint-scene/everest-demo`` (the demo, model ``current``)
and ``inpaint-scenes/default``.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from models.inpaint_scene import InpaintSceneConfig, OtherBands, default_output, inpaint_scene, output_paths
from pipeline.pictures import picture_markdown
from pipeline.scene_masks import MaskKind, MaskSource

DEMO_OUT = Path("demo_out/everest")


def scene_config(input: str, output: str, model: str = "current", mask_kind: MaskKind = "nodata",
                 mask_path: str | None = None, qa_kind: str = "c2_qa_pixel", dilate: int = 0,
                 reproject_mask: bool = False, bands: list[int] | None = None, device: str = "cpu",
                 batch_size: int | None = None, zero_is_nodata: bool = True,
                 other_bands: OtherBands = "fill") -> InpaintSceneConfig:
    """Flat flow/CLI parameters -> :class:`InpaintSceneConfig` (validates them)."""
    mask = MaskSource(kind=mask_kind, path=mask_path, qa_kind=qa_kind, dilate=dilate, reproject=reproject_mask)
    return InpaintSceneConfig(input=input, output=output, model=model, mask=mask,
                              bands=tuple(bands) if bands else None, device=device, batch_size=batch_size,
                              zero_is_nodata=zero_is_nodata, other_bands=other_bands)


@task(name="inpaint-scene-file")
def inpaint_scene_task(cfg: InpaintSceneConfig) -> dict:
    return inpaint_scene(cfg, on_note=lambda text: print(f"note: {text}")).model_dump(mode="json")


@task(name="everest-demo")
def everest_demo_task(model: str, out_dir: str, device: str) -> dict:
    from models.scene_demo import run_everest_demo

    return run_everest_demo(model, out_dir, device=device)


@flow(name="inpaint-scene", log_prints=True)
def inpaint_scene_flow(input: str | None = None, output: str | None = None, model: str = "current",
                       mask_kind: MaskKind = "nodata", mask_path: str | None = None,
                       qa_kind: str = "c2_qa_pixel", dilate: int = 0, reproject_mask: bool = False,
                       bands: list[int] | None = None, device: str = "cpu", zero_is_nodata: bool = True,
                       other_bands: OtherBands = "fill", demo_out_dir: str = str(DEMO_OUT)) -> dict:
    """Inpaint one scene (returns the summary: paths and counts). No ``input``: the Everest demo
    into ``demo_out_dir``."""
    if input is None:
        result = everest_demo_task(model, demo_out_dir, device)
        create_markdown_artifact(key="inpaint-everest-demo", markdown=Path(result["summary_md"]).read_text() + "\n"
                                 + picture_markdown(result["quicklook"], "quicklook: input | mask | output"))
        return result
    if output is None:
        output = str(default_output(input))
    cfg = scene_config(input, output, model, mask_kind, mask_path, qa_kind, dilate, reproject_mask, bands, device,
                       zero_is_nodata=zero_is_nodata, other_bands=other_bands)
    summary = inpaint_scene_task(cfg)
    notes = "\n\n" + "\n".join(f"- note: {n}" for n in summary["notes"]) if summary["notes"] else ""
    create_markdown_artifact(
        key="inpaint-scene",
        markdown=(f"## Inpainted `{Path(input).name}`\n\nmodel `{summary['model']}` on bands "
                  f"{summary['model_bands']}, {summary['filled_pixels']} px filled ({summary['filled_fraction']:.2%}), "
                  f"{summary['tiles_run']}/{summary['tiles_total']} tiles through the model, "
                  f"{summary['seconds']:.1f} s. Other bands {summary['other_bands']}: "
                  f"{summary['other_bands_handling']}. Holes: mask source `{summary['mask_source']}`; "
                  f"nodata: {summary['nodata_rule']}.{notes}\n\nCOG `{summary['output']}`, "
                  f"STAC `{summary['stac_item']}`\n\n"
                  + picture_markdown(summary["quicklook"], "quicklook: input | mask | output")))
    return summary


@flow(name="inpaint-scenes", log_prints=True)
def inpaint_scenes_flow(inputs: list[str], output_dir: str, model: str = "current", mask_kind: MaskKind = "nodata",
                        dilate: int = 0, device: str = "cpu", deployment: str | None = None,
                        zero_is_nodata: bool = True, other_bands: OtherBands = "fill") -> list[dict]:
    """One ``inpaint-scene`` flow run per scene. ``deployment`` (e.g. ``inpaint-scene/default``):
    submit each scene to that served deployment instead and wait for all of them."""
    jobs = [dict(input=str(p), output=str(default_output(p, output_dir)), model=model,
                 mask_kind=mask_kind, dilate=dilate, device=device, zero_is_nodata=zero_is_nodata,
                 other_bands=other_bands) for p in inputs]
    if deployment is None:
        return [inpaint_scene_flow(**job) for job in jobs]
    from prefect.deployments import run_deployment

    runs = [run_deployment(deployment, parameters=job, timeout=0) for job in jobs]
    from prefect.flow_runs import wait_for_flow_run

    finished = [wait_for_flow_run(r.id) for r in runs]
    return [{"flow_run": str(r.id), "state": r.state_name, "output": job["output"],
             "outputs": {k: str(v) for k, v in output_paths(Path(job["output"])).items()}}
            for r, job in zip(finished, jobs)]


def deployments() -> list:
    return [inpaint_scene_flow.to_deployment(name="default", description="Inpaint one GeoTIFF scene into a COG "
                                             "(no input: the Everest demo into demo_out/everest/)"),
            inpaint_scene_flow.to_deployment(name="everest-demo", parameters={"model": "current"},
                                             description="Everest + real SLC-off gaps: model vs GDAL FillNodata"),
            inpaint_scenes_flow.to_deployment(name="default", description="One inpaint-scene run per scene")]

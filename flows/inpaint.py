"""Prefect flows for scene inpainting (thin: the work is :func:`models.inpaint_scene.inpaint_scene`).

- ``inpaint-scene``: one scene (``config``: :class:`~models.inpaint_scene.InpaintSceneConfig`) ->
  COG + filled mask + quicklook + STAC item (one task), with a markdown artifact. With no
  ``config`` it runs the embedded Everest demo (``demo``: :class:`~models.scene_demo.EverestDemoConfig`,
  :func:`models.scene_demo.run_everest_demo`) into ``demo_out/everest/`` (summary.md there).
- ``inpaint-scenes``: fans out one ``inpaint-scene`` flow run per scene
  (:class:`~models.inpaint_scene.InpaintScenesConfig`: a subflow run each, or, with ``deployment``
  set, one run of that deployment each so served workers share them).

Deployments: ``inpaint-scene/default`` (``-p config='{"input": "IN.tif", "output": "OUT.tif"}'``;
no parameters: the demo), ``inpaint-scene/everest-demo`` (the demo, model ``current``) and
``inpaint-scenes/default``. The artifacts' text is written beside the functions that produce it
(:func:`models.inpaint_scene.summary_markdown`, :func:`models.scene_demo.demo_markdown`).
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from models.inpaint_scene import InpaintSceneConfig, InpaintScenesConfig, inpaint_scene, output_paths, summary_markdown
from models.scene_demo import EverestDemoConfig, demo_markdown


@task(name="inpaint-scene-file")
def inpaint_scene_task(cfg: InpaintSceneConfig) -> dict:
    """One scene; its progress goes to the run's log (a line per 10 % of the tiles, or per 30 s)."""
    from prefect import get_run_logger

    from models.inference import ProgressLines

    progress = ProgressLines(get_run_logger().info, label=f"inpaint {Path(cfg.input).name}")
    return inpaint_scene(cfg, on_note=lambda text: print(f"note: {text}"), on_progress=progress).model_dump(mode="json")


@task(name="everest-demo")
def everest_demo_task(cfg: EverestDemoConfig) -> dict:
    from models.scene_demo import run_everest_demo

    return run_everest_demo(cfg.model, cfg.out_dir, device=cfg.device, pictures_dir=cfg.pictures_dir)


@flow(name="inpaint-scene", log_prints=True)
def inpaint_scene_flow(config: InpaintSceneConfig | None = None,
                       demo: EverestDemoConfig = EverestDemoConfig()) -> dict:
    """Inpaint one scene (returns the summary: paths and counts). No ``config``: the Everest demo
    (``demo``)."""
    if config is None:
        result = everest_demo_task(demo)
        create_markdown_artifact(key="inpaint-everest-demo", markdown=demo_markdown(result))
        return result
    summary = inpaint_scene_task(config)
    create_markdown_artifact(key="inpaint-scene", markdown=summary_markdown(summary, config.input))
    return summary


@flow(name="inpaint-scenes", log_prints=True)
def inpaint_scenes_flow(config: InpaintScenesConfig) -> list[dict]:
    """One ``inpaint-scene`` flow run per scene. ``config.deployment`` (e.g. ``inpaint-scene/default``):
    submit each scene to that served deployment instead and wait for all of them."""
    jobs = config.jobs()
    if config.deployment is None:
        return [inpaint_scene_flow(config=job) for job in jobs]
    from prefect.deployments import run_deployment
    from prefect.flow_runs import wait_for_flow_run

    runs = [run_deployment(config.deployment, parameters={"config": job.model_dump(mode="json")}, timeout=0)
            for job in jobs]
    finished = [wait_for_flow_run(r.id) for r in runs]
    return [{"flow_run": str(r.id), "state": r.state_name, "output": str(job.output),
             "outputs": {k: str(v) for k, v in output_paths(Path(job.output)).items()}}
            for r, job in zip(finished, jobs)]


def deployments() -> list:
    return [inpaint_scene_flow.to_deployment(name="default", description="Inpaint one GeoTIFF scene into a COG: "
                                             "-p config='{\"input\": \"IN.tif\", \"output\": \"OUT.tif\"}' "
                                             "(no config: the Everest demo into demo_out/everest/)"),
            inpaint_scene_flow.to_deployment(name="everest-demo",
                                             description="Everest + real SLC-off gaps: model vs GDAL FillNodata"),
            inpaint_scenes_flow.to_deployment(name="default", description="One inpaint-scene run per scene")]

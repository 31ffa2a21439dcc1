"""Serve every edgefill deployment from one process, and wait until they are served.

``edgefill serve [MODULE ...]`` (also ``python -m flows.serve``) imports the flow modules in
:data:`FLOW_MODULES` and serves each module's ``deployments()`` against the Prefect API in
``PREFECT_API_URL`` (start one with ``scripts/prefect_server.sh start``). A module not present in
this checkout is skipped with a warning. ``edgefill wait-for-deployments FLOW/DEPLOYMENT ...``
(:func:`wait_for`) blocks until they exist on the API (scripts/demo.sh, after starting the server
in the background). The command line itself is :mod:`flows.cli`.
"""
from __future__ import annotations

import asyncio
import importlib
import time
import warnings

FLOW_MODULES = ("flows.export", "flows.prepare", "flows.train", "flows.inpaint")


def collect_deployments(modules: tuple[str, ...] = FLOW_MODULES) -> list:
    found = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            warnings.warn(f"{name} is not in this checkout; its deployments are not served", stacklevel=2)
            continue
        found.extend(module.deployments())
    return found


def serve_deployments(modules: tuple[str, ...] = FLOW_MODULES) -> None:
    """Serve the deployments of ``modules`` until interrupted."""
    from prefect import serve

    deployments = collect_deployments(tuple(modules) or FLOW_MODULES)
    if not deployments:
        raise SystemExit("no deployments to serve")
    print("serving: " + ", ".join(f"{getattr(d, 'flow_name', '?')}/{d.name}" for d in deployments), flush=True)
    serve(*deployments)


async def wait_for(names: list[str], timeout_s: float = 120.0, poll_s: float = 1.0) -> None:
    """Return once every ``FLOW/DEPLOYMENT`` in ``names`` exists on the Prefect API; ``TimeoutError``
    after ``timeout_s``."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    pending = list(names)
    async with get_client() as client:
        while pending:
            still = []
            for name in pending:
                try:
                    await client.read_deployment_by_name(name)
                except Exception:  # not registered yet (ObjectNotFound) or server busy
                    still.append(name)
            pending = still
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"deployments not served after {timeout_s:.0f} s: {pending} "
                                   "(see demo_out/serve.log)")
            if pending:
                await asyncio.sleep(poll_s)


def wait_for_deployments(names: list[str], timeout_s: float = 120.0) -> None:
    asyncio.run(wait_for(names, timeout_s))


if __name__ == "__main__":  # python -m flows.serve [MODULE ...]: what `edgefill serve [MODULE ...]` runs
    import sys

    serve_deployments(tuple(sys.argv[1:]) or FLOW_MODULES)

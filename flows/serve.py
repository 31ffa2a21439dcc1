"""Serve every edgefill deployment from one process: ``python -m flows.serve``.

Imports the flow modules in :data:`FLOW_MODULES` and serves each module's ``deployments()``
against the Prefect API in ``PREFECT_API_URL`` (start one with ``scripts/prefect_server.sh start``).
A module not present in this checkout is skipped with a warning.
"""
from __future__ import annotations

import importlib
import sys
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


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    only = tuple(argv if argv else sys.argv[1:]) or FLOW_MODULES
    deployments = collect_deployments(only)
    if not deployments:
        raise SystemExit("no deployments to serve")
    print("serving: " + ", ".join(f"{getattr(d, 'flow_name', '?')}/{d.name}" for d in deployments), flush=True)
    serve(*deployments)


if __name__ == "__main__":
    main()

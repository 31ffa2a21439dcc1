"""Block until named deployments exist on the Prefect API (used by scripts/demo.sh after
starting ``python -m flows.serve`` in the background).

Usage: ``python -m flows.wait_for_deployments FLOW/DEPLOYMENT ... [--timeout SECONDS]``
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

from prefect.client.orchestration import get_client


async def wait_for(names: list[str], timeout_s: float = 120.0, poll_s: float = 1.0) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="+")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    asyncio.run(wait_for(args.names, args.timeout))
    print(f"served: {', '.join(args.names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the SHA-256 of pyproject.toml's dependency declarations (runtime + optional), the
digest that scripts/lock.sh writes into requirements.lock and tests/test_lock.py checks."""
from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dependency_digest(pyproject: Path = ROOT / "pyproject.toml") -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = {"dependencies": project.get("dependencies", []),
                "optional-dependencies": project.get("optional-dependencies", {}),
                "requires-python": project.get("requires-python")}
    return hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()


if __name__ == "__main__":
    print(dependency_digest())

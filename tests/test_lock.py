"""requirements.lock is the environment: it agrees with pyproject.toml and is what is installed."""
from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every pinned entry of the lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        head = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if head:
            out[canonicalize_name(head.group(1))] = (head.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return reqs + [Requirement(r) for r in project["optional-dependencies"]["dev"]]


def test_lock_was_made_from_this_pyproject():
    import sys

    sys.path.insert(0, str(ROOT))
    from scripts.lock_digest import dependency_digest

    header = re.search(r"pyproject-dependencies-sha256: ([0-9a-f]{64})", LOCK.read_text())
    assert header, "requirements.lock has no pyproject digest line: regenerate it with bash scripts/lock.sh"
    assert header.group(1) == dependency_digest(), (
        "pyproject.toml's dependencies changed since requirements.lock was made: run bash scripts/lock.sh")


def test_every_declared_dependency_is_locked_within_its_range_with_hashes():
    locked = _locked()
    assert len(locked) > 100  # the whole environment, not just the direct dependencies
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is declared in pyproject.toml but not locked"
        ver, hashes = locked[name]
        assert req.specifier.contains(Version(ver), prereleases=True), f"{req.name}=={ver} is outside {req.specifier}"
    assert all(h for _, h in locked.values()), [n for n, (_, h) in locked.items() if not h]
    assert locked["torch"][0].endswith("+cpu"), "torch must stay locked to its CPU build"
    assert not any(n.startswith("nvidia-") for n in locked), "a CUDA build of torch crept into the lock"


def test_the_running_environment_is_the_lock():
    """What scripts/setup_venv.sh installed is exactly the locked version of every locked package."""
    locked = _locked()
    wrong = {}
    for name, (ver, _) in locked.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            wrong[name] = (ver, None)
            continue
        if Version(have) != Version(ver):
            wrong[name] = (ver, have)
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"

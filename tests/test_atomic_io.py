"""The one atomic writer (files, directories, several files together) and the import layering."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.atomic_io import AtomicFiles, atomic_dir, atomic_path, atomic_write_json, stale_temps, temp_name

REPO = Path(__file__).resolve().parent.parent


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_file_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "a" / "x.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert _names(target.parent) == ["x.json"]  # the temp file is gone


def test_directory_commit_rollback_and_refusal(tmp_path):
    target = tmp_path / "store.zarr"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "part").write_text("half")
            raise RuntimeError("boom")
    assert _names(tmp_path) == []  # nothing half-written, no temp left
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".store.zarr.") and not target.exists()
        (tmp / "a").write_text("1")
    assert _names(target) == ["a"] and _names(tmp_path) == ["store.zarr"]
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(target):
            pass
    assert (target / "a").read_text() == "1"


def test_directory_replace_swaps_the_whole_directory(tmp_path):
    target = tmp_path / "cat.stac"
    with atomic_dir(target) as tmp:
        (tmp / "old.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target, replace=True) as tmp:
            (tmp / "new.json").write_text("new")
            raise RuntimeError("boom")
    assert _names(target) == ["old.json"]  # a failed replacement keeps the old directory
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "new.json").write_text("new")
    assert _names(target) == ["new.json"] and _names(tmp_path) == ["cat.stac"]


def test_temporaries_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    target = tmp_path / "entry"
    killed = temp_name(target)
    killed.mkdir()
    (killed / "junk").write_text("x")
    other = temp_name(tmp_path / "entry-2")  # another target's temp is not touched
    other.mkdir()
    assert stale_temps(target) == [killed]
    with atomic_dir(target) as tmp:
        (tmp / "ok").write_text("1")
    assert not killed.exists() and other.exists() and _names(target) == ["ok"]


def test_atomic_files_commit_and_rollback(tmp_path):
    finals = [tmp_path / "out" / "x.tif", tmp_path / "out" / "x.stac.json"]
    with pytest.raises(RuntimeError):
        with AtomicFiles(finals) as atomic:
            atomic.temp(finals[0]).write_text("partial")
            raise RuntimeError("boom")
    assert list((tmp_path / "out").iterdir()) == []
    with AtomicFiles(finals) as atomic:
        for f in finals:
            atomic.temp(f).write_text(f.name)
        atomic.temp("scratch.tif").write_text("scratch")  # scratch files never reach the output dir
        atomic.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.stac.json", "x.tif"]
    assert finals[1].read_text() == "x.stac.json"


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` - an entry point (``python -m x``), not a dependency of the module."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__")


def _project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (top level or inside functions; not in its
    ``__main__`` block, which runs as another module object)."""
    files = [*REPO.glob("pipeline/**/*.py"), *REPO.glob("models/**/*.py"), *REPO.glob("flows/*.py")]
    modules = {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f for f in files}
    graph = {}
    for name, path in modules.items():
        deps = set()
        tree = ast.parse(path.read_text())
        tree.body = [n for n in tree.body if not _is_main_block(n)]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path back to its start), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_project_modules():
    graph = _project_imports()
    assert "models.checkpoint" in graph and "models.registry" in graph["models.promotion"]
    assert "models.registry" not in graph["models.checkpoint"]  # registry builds on checkpoint, not back
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the detector detects

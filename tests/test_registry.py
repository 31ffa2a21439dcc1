"""Model registry: registration, name resolution, promotion logic (better -> promoted, worse -> kept)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_inference_bundle
from models.config import ModelConfig
from models.networks import build_networks
import models.registry as reg
from models.registry import (current_model, edgefill_home, list_models, load_index, load_model, promote_if_better,
                             register_model, registry_dir, resolve_model)
from models.shipping import ship_model


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A user registry of its own and no shipped model (the shipped default has tests of its own)."""
    root = tmp_path / "registry"
    monkeypatch.setenv("EDGEFILL_REGISTRY", str(root))
    monkeypatch.setattr(reg, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    return root


def _run(tmp_path, name: str, seed: int) -> tuple:
    torch.manual_seed(seed)
    cfg = ModelConfig.tiny()
    nets = build_networks(cfg)
    run = save_inference_bundle(tmp_path / name, edge_generator=nets["g1"], inpaint_generator=nets["g2"],
                                model_config=cfg, data_version="abc123", discriminators={"d1": nets["d1"], "d2": nets["d2"]})
    return run, nets


def test_register_resolve_and_load_by_name(registry, tmp_path):
    assert registry_dir() == registry
    run, nets = _run(tmp_path, "run-a", 0)
    entry = register_model(run, metrics={"hole_psnr": 20.0})
    assert entry["name"] == "tiny-v1" and entry["data_version"] == "abc123" and entry["metrics"]["hole_psnr"] == 20.0
    assert entry["config"]["base_channels"] == 16 and entry["created"]
    assert current_model() is None                      # registering never moves `current`
    assert resolve_model("tiny-v1") == registry / "tiny-v1"
    assert resolve_model(run) == run                    # a run dir passes through
    bundle = load_model("tiny-v1")
    first = next(iter(nets["g2"].state_dict()))
    assert torch.equal(bundle.inpaint_generator.state_dict()[first], nets["g2"].state_dict()[first])
    slim = torch.load(registry / "tiny-v1" / "checkpoints" / "last.pt", weights_only=True)
    assert "optimizers" not in slim and set(slim["models"]) == {"g1", "g2", "d1", "d2"}
    with pytest.raises(KeyError, match=r"known models: \['tiny-v1'\]"):
        resolve_model("nope")
    with pytest.raises(KeyError, match="no current model"):
        resolve_model("current")
    assert register_model(run) == entry and list_models() == ["tiny-v1"]  # same run, same step: no duplicate
    other, _ = _run(tmp_path, "run-b", 1)
    with pytest.raises(ValueError, match="already registered"):
        register_model(other, name="tiny-v1")


def test_promotion_better_promoted_worse_kept(registry, tmp_path):
    a = register_model(_run(tmp_path, "a", 0)[0], metrics={"hole_psnr": 20.0})["name"]
    first = promote_if_better(a)
    assert first.promoted and current_model() == a      # no current model yet -> promoted
    b = register_model(_run(tmp_path, "b", 1)[0], metrics={"hole_psnr": 21.5})["name"]
    better = promote_if_better(b)
    assert better.promoted and current_model() == b and "better" in better.reason
    c = register_model(_run(tmp_path, "c", 2)[0], metrics={"hole_psnr": 19.0})["name"]
    worse = promote_if_better(c)
    assert not worse.promoted and current_model() == b
    assert f"keeping {b}" in worse.reason and "not better" in worse.reason
    # the current model re-measured on the same pairings decides, not its stale registry value
    d = register_model(_run(tmp_path, "d", 3)[0], metrics={"hole_psnr": 21.0})["name"]
    assert promote_if_better(d, current_value=20.5).promoted and current_model() == d
    assert resolve_model("current") == registry / d
    index = load_index()
    assert [h["to"] for h in index["history"]] == [a, b, d]
    assert list_models() == sorted([a, b, c, d])
    with pytest.raises(ValueError, match="has no metric"):
        promote_if_better(a, metric="fid")


def test_registry_index_written_atomically_and_readable(registry, tmp_path):
    register_model(_run(tmp_path, "a", 0)[0], metrics={"hole_psnr": 1.0})
    assert json.loads((registry / "index.json").read_text())["models"]["tiny-v1"]["version"] == 1
    assert not list(registry.glob(".*tmp*"))


def test_user_registry_lives_outside_the_source_tree(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEFILL_REGISTRY", raising=False)
    monkeypatch.delenv("EDGEFILL_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert registry_dir() == tmp_path / "xdg" / "edgefill" / "registry"
    monkeypatch.setenv("EDGEFILL_HOME", str(tmp_path / "home"))
    assert edgefill_home() == tmp_path / "home" and registry_dir() == tmp_path / "home" / "registry"
    monkeypatch.delenv("EDGEFILL_HOME")
    monkeypatch.delenv("XDG_DATA_HOME")
    package = Path(reg.__file__).resolve().parent.parent
    assert package not in registry_dir().resolve().parents


def test_shipped_default_is_current_until_a_user_model_is_promoted(registry, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(reg, "SHIPPED_DIR", shipped)
    run, nets = _run(tmp_path, "to-ship", 5)
    ship_model(run, "landsat-test-v1", checkpoint="last.pt", metrics={"hole_psnr": 25.0}, card="# card\n", dest=shipped)
    assert current_model() == "landsat-test-v1" and resolve_model("current") == shipped / "landsat-test-v1"
    bundle = load_model("current")  # half-precision weights load into float32 networks
    assert next(bundle.inpaint_generator.parameters()).dtype == torch.float32
    key = next(iter(nets["g2"].state_dict()))
    torch.testing.assert_close(bundle.inpaint_generator.state_dict()[key], nets["g2"].state_dict()[key], atol=1e-3, rtol=1e-3)
    slim = torch.load(shipped / "landsat-test-v1" / "checkpoints" / "last.pt", weights_only=True)
    assert set(slim["models"]) == {"g1", "g2"} and slim["models"]["g2"][key].dtype == torch.float16
    worse = register_model(_run(tmp_path, "w", 6)[0], metrics={"hole_psnr": 20.0})["name"]
    assert not promote_if_better(worse).promoted and current_model() == "landsat-test-v1"
    better = register_model(_run(tmp_path, "b", 7)[0], metrics={"hole_psnr": 26.0})["name"]
    assert promote_if_better(better).promoted and current_model() == better
    assert not (shipped / better).exists() and "landsat-test-v1" in list_models()  # shipped dir stays read-only
    with pytest.raises(ValueError, match="already registered .* or shipped"):
        register_model(_run(tmp_path, "x", 8)[0], name="landsat-test-v1")


def test_a_fine_tune_of_a_shipped_model_gets_the_next_free_version(registry, tmp_path, monkeypatch):
    """Retraining the shipped default (a fresh install's `current`) registers a run of the shipped
    model's preset: its automatic name must skip the shipped name, not collide with it."""
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(reg, "SHIPPED_DIR", shipped)
    ship_model(_run(tmp_path, "to-ship", 5)[0], "tiny-v1", checkpoint="last.pt", metrics={"hole_psnr": 25.0},
               card="# card\n", dest=shipped)
    entry = register_model(_run(tmp_path, "fine-tuned", 6)[0], metrics={"hole_psnr": 20.0})
    assert entry["name"] == "tiny-v2" and entry["version"] == 2
    assert resolve_model("tiny-v2") == registry / "tiny-v2" and resolve_model("tiny-v1") == shipped / "tiny-v1"
    assert register_model(_run(tmp_path, "next", 7)[0], metrics={"hole_psnr": 21.0})["name"] == "tiny-v3"

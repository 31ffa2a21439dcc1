"""One device check for every command that takes ``--device`` (models.device.require_device):
a device this machine does not have is bad input, answered with one clear line, never a traceback."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from models.device import DeviceError, require_device

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
NO_CUDA = "CUDA is not available here; use --device cpu"
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_require_device_names_what_is_wrong():
    assert require_device("cpu") == torch.device("cpu")
    assert require_device(" CPU ") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "", "tpu"):
        with pytest.raises(DeviceError, match="is not a device edgefill runs on: use cpu, cuda or cuda:N"):
            require_device(bad)
    assert issubclass(DeviceError, ValueError)


@needs_no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_require_device_refuses_cuda_without_cuda(name):
    with pytest.raises(DeviceError, match=f"device '{name}' asked for but {NO_CUDA}"):
        require_device(name)


@needs_no_cuda
def test_every_command_with_a_device_answers_missing_cuda_in_one_line(prepared_store_template, tmp_path):
    from flows.cli import app
    from inpaint_support import stack_scene

    scene = stack_scene("LE07_039028_20100702_SLCOFF", tmp_path / "scene.tif")
    store = str(prepared_store_template)
    commands = {
        "train": ["train", store, "--config", "tiny", "--max-steps", "1", "--out", str(tmp_path / "run")],
        "evaluate": ["evaluate", store, "--model", "current", "--pairs-per-bin", "1", "--out", str(tmp_path / "eval")],
        "inpaint": ["inpaint", str(scene), str(tmp_path / "out" / "filled.tif")],
        "inpaint-demo": ["inpaint-demo", "--out-dir", str(tmp_path / "demo")],
    }
    for command, args in commands.items():
        res = CliRunner().invoke(app, [*args, "--device", "cuda"])
        assert res.exit_code == 2, (command, res.output, res.exception)
        lines = res.stderr.strip().splitlines()
        assert lines == [f"error: device 'cuda' asked for but {NO_CUDA}"], (command, res.stderr)
        assert "Traceback" not in res.output
    for written in ("run", "eval", "out", "demo"):  # refused before anything was written
        assert not (tmp_path / written).exists(), written

"""Serialized programs are treated like pickles: they run code, so they need --unsafe-load."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gradscope.cli import main

torch.set_num_threads(1)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


class _Overwriter(nn.Module):
    """A scripted forward that writes into a file it names: code carried by the checkpoint."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.lin = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8).fill_(88)
        return self.lin(x) + 0 * mapped[:1].float()  # used, so TorchScript keeps the write


@pytest.fixture
def scripted_overwriter(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"safe")
    path = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(_Overwriter(str(victim))), str(path))
    return path, victim


def test_a_torchscript_file_is_refused_without_unsafe_load(scripted_overwriter):
    path, victim = scripted_overwriter
    result = invoke("check", str(path), "--input-shape", "8,4", "--steps", "2")
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {path} is a TorchScript program: loading it runs code")
    assert "--unsafe-load" in result.output
    assert victim.read_bytes() == b"safe"


def test_unsafe_load_really_runs_the_program(scripted_overwriter):
    path, victim = scripted_overwriter
    result = invoke(
        "check", str(path), "--input-shape", "8,4", "--steps", "2", "--loss", "mse",
        "--unsafe-load",
    )
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == b"XXXX"  # the flag executes the file's code, as it says


def test_a_torch_export_program_is_refused_without_unsafe_load(tmp_path):
    path = tmp_path / "model.pt2"
    model = nn.Sequential(nn.Linear(4, 3))
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), str(path))
    refused = invoke("check", str(path), "--steps", "2")
    assert refused.exit_code == 2
    assert refused.output.startswith(f"Error: {path} is a torch.export program")
    allowed = invoke("check", str(path), "--steps", "2", "--loss", "mse", "--unsafe-load")
    assert allowed.exit_code == 0, allowed.output


def test_a_renamed_program_is_still_recognised(tmp_path, scripted_overwriter):
    path, victim = scripted_overwriter
    renamed = tmp_path / "weights.pth"
    renamed.write_bytes(path.read_bytes())
    result = invoke("check", str(renamed), "--model", "fnn", "--steps", "2")
    assert result.exit_code == 2
    assert "TorchScript program" in result.output
    assert victim.read_bytes() == b"safe"


def test_help_says_truthfully_what_unsafe_load_executes():
    text = " ".join(invoke("check", "--help").output.split())
    assert "TorchScript and torch.export (.pt2) programs. This EXECUTES code from the file" in text
    assert "pickled objects, TorchScript and torch.export programs run code, so they need " \
        "--unsafe-load" in text

"""The gradscope CLI through click's CliRunner, and once as the real installed script."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gradscope.cli import main
from gradscope.models import builtin_specs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _state_dict(name: str) -> dict:
    torch.manual_seed(0)
    return builtin_specs()[name].factory().state_dict()


@pytest.fixture
def sigmoid_ckpt(tmp_path):
    path = tmp_path / "sigmoid.pt"
    torch.save(_state_dict("deep_sigmoid_mlp"), path)
    return path


def test_demo_finds_the_problem_and_shows_the_fix_working(tmp_path):
    result = invoke("demo", "deep_sigmoid_mlp", "--steps", "30", "--plot", str(tmp_path))
    assert result.exit_code == 0
    assert "vanishing_gradient" in result.output
    assert "fix (use_relu): Replace Sigmoid with ReLU" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("loss of")]
    faulty, fixed = (
        [float(v) for v in line.split(": ")[1].split(" over")[0].split(" -> ")] for line in lines
    )
    assert fixed[0] - fixed[1] > 3 * (faulty[0] - faulty[1])
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == PNG_MAGIC


def test_check_exit_codes_follow_fail_on(sigmoid_ckpt):
    result = invoke("check", str(sigmoid_ckpt), "--model", "deep_sigmoid_mlp", "--steps", "10")
    assert result.exit_code == 1
    assert "vanishing_gradient" in result.output
    assert "the diagnosis used a synthetic batch" in result.output
    healthy = sigmoid_ckpt.parent / "relu.pt"
    torch.save(_state_dict("deep_relu_mlp"), healthy)
    ok = invoke("check", str(healthy), "--model", "deep_relu_mlp", "--steps", "10")
    assert ok.exit_code == 0, ok.output


def test_check_json_round_trips_through_report_command(sigmoid_ckpt, tmp_path):
    result = invoke(
        "check", str(sigmoid_ckpt), "--model", "deep_sigmoid_mlp", "--steps", "8", "--json"
    )
    data = json.loads(result.output)
    assert data["findings"][0]["kind"] == "vanishing_gradient"
    saved = tmp_path / "run.json"
    saved.write_text(result.output)
    # 8 steps cannot show a stall: the vanishing gap alone makes it a warning.
    again = invoke("report", str(saved), "--plot", str(tmp_path / "plots"), "--fail-on", "warning")
    assert again.exit_code == 1
    assert "vanishing_gradient" in again.output
    assert (tmp_path / "plots" / "gradient_flow.png").exists()


@pytest.mark.parametrize("fmt", ["plain", "nested", "lightning", "ddp", "safetensors"])
def test_every_state_dict_format_loads(tmp_path, fmt):
    sd = _state_dict("fnn")
    path = tmp_path / "fnn.pt"
    if fmt == "plain":
        torch.save(sd, path)
    elif fmt == "nested":
        torch.save({"epoch": 3, "model_state_dict": sd, "optimizer": {}}, path)
    elif fmt == "lightning":
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, path)
    elif fmt == "ddp":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "fnn.safetensors"
        save_file(sd, str(path))
    result = invoke("check", str(path), "--model", "fnn", "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "report for fnn: healthy" in result.output


def test_torchscript_and_export_carry_their_architecture(tmp_path):
    model = builtin_specs()["fnn"].factory()
    scripted = tmp_path / "fnn_script.pt"
    torch.jit.save(torch.jit.script(model), str(scripted))
    result = invoke(
        "check", str(scripted), "--input-shape", "16,10", "--loss", "mse", "--steps", "5",
        "--unsafe-load",
    )
    assert result.exit_code == 0, result.output
    assert "TorchScript modules take no forward hooks" in result.output
    exported = tmp_path / "fnn.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(16, 10),)), str(exported))
    result = invoke("check", str(exported), "--loss", "mse", "--steps", "5", "--unsafe-load")
    assert result.exit_code == 0, result.output
    assert "recorded steps" in result.output


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_without_unsafe_load(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _state_dict("fnn"), "payload": _Evil(str(marker))}, path)
    result = invoke("check", str(path), "--model", "fnn")
    assert result.exit_code == 2
    assert "needs to run code from the file to load" in result.output
    assert "--unsafe-load" in result.output
    assert not marker.exists()
    unsafe = invoke("check", str(path), "--model", "fnn", "--unsafe-load", "--steps", "3")
    assert marker.exists()  # the flag really does execute the file's code
    assert unsafe.exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pt", "--model", "fnn"], "Error: No such checkpoint file: {tmp}/missing.pt."),
        (
            ["notckpt.pt", "--model", "fnn"],
            "Error: {tmp}/notckpt.pt is not a checkpoint torch can read",
        ),
        (
            ["fnn.pt", "--model", "deep_relu_mlp"],
            "Error: The checkpoint's keys do not match model deep_relu_mlp: missing 0.weight",
        ),
        (
            ["wide.pt", "--model", "fnn"],
            "Error: Shape mismatch in layer fc1: the checkpoint's fc1.weight is (30, 10) but model "
            "fnn expects (20, 10).",
        ),
        (
            ["fnn.pt", "--model", "fnn", "--input-shape", "4,7"],
            "Error: The model rejects input of shape (4, 7): fc1 (Linear) expects a last dimension "
            "of 10",
        ),
        (["fnn.pt", "--model", "nope"], "Error: Unknown model 'nope'; known models: "),
        (
            ["fnn.pt", "--model-factory", "no_such_pkg.x:build"],
            "Error: --model-factory could not import 'no_such_pkg.x'",
        ),
        (["fnn.pt"], "Error: {tmp}/fnn.pt holds weights only: say which model"),
        (
            ["fnn.pt", "--model", "fnn", "--input-shape", "a,b"],
            "Error: --input-shape 'a,b' must be whole numbers separated by commas",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, args, message):
    torch.save(_state_dict("fnn"), tmp_path / "fnn.pt")
    wide = nn.Sequential()
    wide.fc1, wide.fc2 = nn.Linear(10, 30), nn.Linear(30, 1)
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    (tmp_path / "notckpt.pt").write_text("hello")
    args = [str(tmp_path / args[0])] + args[1:]
    result = invoke("check", *args)
    assert result.exit_code == 2
    assert result.output.startswith(message.format(tmp=tmp_path))
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["check", str(tmp_path / "x.pt"), "--debug"])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception)


def test_models_and_plugins_list_what_is_available():
    models = json.loads(invoke("models", "--json").output)
    by_name = {m["name"]: m for m in models}
    assert by_name["deep_sigmoid_mlp"]["fixed_by"] == "deep_relu_mlp"
    assert by_name["fnn"]["input_shape"] == [1, 10]
    plugins = json.loads(invoke("plugins", "--json").output)
    assert {"vanishing", "plots"} <= {p["name"] for p in plugins}


def test_every_command_has_help_with_an_example():
    for command in ("check", "demo", "models", "plugins", "report"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output, command


def test_the_installed_script_runs_for_real(tmp_path):
    script = shutil.which("gradscope")
    assert script is not None, "pip install -e . puts gradscope on PATH"
    torch.save(_state_dict("deep_sigmoid_mlp"), tmp_path / "m.pt")
    proc = subprocess.run(
        [
            script,
            "check",
            str(tmp_path / "m.pt"),
            "--model",
            "deep_sigmoid_mlp",
            "--steps",
            "6",
            "--fail-on",
            "warning",
        ],
        capture_output=True,
        text=True,
        env={"NO_COLOR": "1", "PATH": ""},
    )
    assert proc.returncode == 1
    assert "vanishing_gradient" in proc.stdout
    assert "\x1b[" not in proc.stdout


def test_check_trains_on_a_real_batch_file_and_a_target_spec(tmp_path):
    spec = builtin_specs()["fnn"]
    torch.save(_state_dict("fnn"), tmp_path / "fnn.pt")
    torch.save(spec.example_batch(32, seed=3), tmp_path / "batch.pt")
    real = invoke(
        "check",
        str(tmp_path / "fnn.pt"),
        "--model",
        "fnn",
        "--batch",
        str(tmp_path / "batch.pt"),
        "--steps",
        "4",
    )
    assert real.exit_code == 0, real.output
    assert "synthetic" not in real.output
    classes = invoke(
        "check",
        str(tmp_path / "fnn.pt"),
        "--model",
        "fnn",
        "--input-shape",
        "16,10",
        "--loss",
        "mse",
        "--target",
        "16,1",
        "--steps",
        "3",
    )
    assert classes.exit_code == 0, classes.output
    bad = invoke(
        "check",
        str(tmp_path / "fnn.pt"),
        "--model",
        "fnn",
        "--input-shape",
        "16,10",
        "--target",
        "ten",
    )
    assert bad.exit_code == 2
    assert "--target 'ten' must be a class count (e.g. 10) or a shape (e.g. 8,1)." in bad.output


def test_json_output_is_machine_readable_and_plots_go_to_stderr(tmp_path):
    torch.save(_state_dict("fnn"), tmp_path / "fnn.pt")
    result = CliRunner().invoke(
        main,
        [
            "check",
            str(tmp_path / "fnn.pt"),
            "--model",
            "fnn",
            "--steps",
            "3",
            "--json",
            "--plot",
            str(tmp_path / "p"),
        ],
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["model_name"] == "fnn"


def test_the_cli_choices_match_what_check_can_run():
    from gradscope.check import LOSSES, OPTIMIZERS
    from gradscope.cli import LOSS_NAMES, OPTIMIZER_NAMES

    assert set(LOSS_NAMES) == set(LOSSES)
    assert set(OPTIMIZER_NAMES) == set(OPTIMIZERS)


def test_set_overrides_a_threshold_and_a_bad_one_is_one_sentence(tmp_path):
    torch.save(_state_dict("deep_relu_mlp"), tmp_path / "relu.pt")
    args = ["check", str(tmp_path / "relu.pt"), "--model", "deep_relu_mlp", "--steps", "6"]
    assert invoke(*args).exit_code == 0
    strict = invoke(*args, "--set", "vanishing.depth_ratio=0.9999", "--json")
    assert "vanishing_gradient" in {f["kind"] for f in json.loads(strict.stdout)["findings"]}
    bad = invoke(*args, "--set", "depth_ratio=1")
    assert bad.exit_code == 2
    assert bad.output.startswith(
        "Error: Threshold override 'depth_ratio=1' must look like plugin.name=value"
    )

"""Exit 1 means findings and nothing else: every bad input is one sentence and exit code 2."""

from __future__ import annotations

import json
import sys
import zipfile

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gradscope.cli import main
from gradscope.models import builtin_specs

torch.set_num_threads(1)


def run(*args: str):
    """Like the installed script: exceptions that escape show as a traceback (and exit 1)."""
    return CliRunner().invoke(main, list(args))


def assert_one_sentence(result, starts: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.output.startswith(f"Error: {starts}"), result.output
    assert result.output.count("\n") == 1, result.output


@pytest.fixture
def fnn_ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "fnn.pt"
    torch.save(builtin_specs()["fnn"].factory().state_dict(), path)
    return path


def test_a_zip_with_a_corrupt_central_directory(tmp_path, fnn_ckpt):
    data = bytearray(fnn_ckpt.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central : central + 40] = b"\x00" * 40
    path = tmp_path / "broken.pt"
    path.write_bytes(bytes(data))
    assert_one_sentence(run("check", str(path), "--model", "fnn"), f"{path} is")


def _scripted(tmp_path) -> bytes:
    path = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(path))
    return path.read_bytes()


def _rewrite_zip(source: bytes, target, drop: str = "", add: dict | None = None) -> None:
    src_path = target.with_suffix(".src")
    src_path.write_bytes(source)
    with zipfile.ZipFile(src_path) as src, zipfile.ZipFile(target, "w") as out:
        for item in src.infolist():
            if drop and item.filename.endswith(drop):
                continue
            out.writestr(item, src.read(item))
        for name, text in (add or {}).items():
            out.writestr(name, text)


def test_a_torchscript_zip_missing_constants_pkl(tmp_path):
    path = tmp_path / "nocode.pt"
    _rewrite_zip(_scripted(tmp_path), path, drop="constants.pkl")
    result = run("check", str(path), "--input-shape", "4,3", "--unsafe-load")
    assert_one_sentence(result, f"{path} is not a TorchScript file torch can load")


def test_a_state_dict_zip_with_a_code_entry(tmp_path, fnn_ckpt):
    path = tmp_path / "odd.pt"
    _rewrite_zip(fnn_ckpt.read_bytes(), path, add={"fnn/code/evil.py": "print('hi')"})
    refused = run("check", str(path), "--model", "fnn")
    assert_one_sentence(refused, f"{path} is a TorchScript program")
    unsafe = run("check", str(path), "--model", "fnn", "--unsafe-load")
    assert_one_sentence(unsafe, f"{path} is not a TorchScript file torch can load")


def test_an_absurd_input_shape_is_refused_before_allocating(fnn_ckpt):
    result = run("check", str(fnn_ckpt), "--model", "fnn", "--input-shape", "100000,100000,100")
    assert_one_sentence(result, "--input-shape 100000,100000,100 is 1e+12 elements")
    assert "more than half of the" in result.output


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("0", "--target '0' must be a class count of at least 1."),
        ("-3", "--target '-3' must be a class count of at least 1."),
        ("11", "--target '11' asks for 11 classes but the model outputs 10 scores per sample."),
    ],
)
def test_a_target_class_count_that_cannot_work(tmp_path, target, message):
    torch.manual_seed(0)
    path = tmp_path / "cnn.pt"
    torch.save(builtin_specs()["cnn_small"].factory().state_dict(), path)
    result = run(
        "check", str(path), "--model", "cnn_small", "--target", target, "--steps", "2"
    )
    assert_one_sentence(result, message)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def build():\n    raise RuntimeError('no GPU here')\n",
         "--model-factory badfactory:build raised RuntimeError: no GPU here."),
        ("def build():\n    return None.weight\n",
         "--model-factory badfactory:build raised AttributeError:"),
        ("def build(:\n", "--model-factory: importing 'badfactory' failed with SyntaxError:"),
        ("raise RuntimeError('import-time failure')\n",
         "--model-factory: importing 'badfactory' failed with RuntimeError: import-time failure."),
    ],
)
def test_a_model_factory_that_fails(tmp_path, monkeypatch, fnn_ckpt, source, message):
    (tmp_path / "badfactory.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "badfactory", raising=False)
    result = run("check", str(fnn_ckpt), "--model-factory", "badfactory:build")
    monkeypatch.delitem(sys.modules, "badfactory", raising=False)
    assert_one_sentence(result, message)


def test_a_file_name_over_255_bytes():
    result = run("check", "x" * 300 + ".pt", "--model", "fnn")
    assert_one_sentence(result, "Cannot open checkpoint xxxx")
    assert "File name too long" in result.output


@pytest.mark.parametrize("option", ["--html", "--plot"])
def test_outputs_into_an_unwritable_place(tmp_path, fnn_ckpt, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    target = blocker / ("report.html" if option == "--html" else "plots")
    result = run("check", str(fnn_ckpt), "--model", "fnn", "--steps", "2", option, str(target))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "Error: Cannot write the HTML report to" if option == "--html" else
        "Error: Cannot write plots to"
    )


def test_deeply_nested_report_json(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert_one_sentence(
        run("report", str(path)),
        "This is not a gradscope report: invalid JSON (maximum recursion depth exceeded",
    )


def test_nonfinite_weights_are_named_before_training(tmp_path):
    torch.manual_seed(0)
    state = builtin_specs()["fnn"].factory().state_dict()
    first = next(iter(state))
    state[first].view(-1)[:3] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    result = run("check", str(path), "--model", "fnn")
    assert_one_sentence(result, "The checkpoint's weights hold NaN/Inf values before any training")
    assert f"{first} (3 of {state[first].numel()})" in result.output


@pytest.mark.parametrize("lr", ["nan", "inf", "-0.1", "0"])
def test_a_learning_rate_that_cannot_train(fnn_ckpt, lr):
    result = run("check", str(fnn_ckpt), "--model", "fnn", "--lr", lr)
    assert_one_sentence(result, "--lr must be a finite number above 0")


def test_an_unexpected_exception_is_one_sentence_and_debug_shows_it(fnn_ckpt, monkeypatch):
    import gradscope.check

    def explode(*args, **kwargs):
        raise ZeroDivisionError("surprise")

    monkeypatch.setattr(gradscope.check, "diagnose", explode)
    result = run("check", str(fnn_ckpt), "--model", "fnn")
    assert_one_sentence(result, "gradscope failed unexpectedly (ZeroDivisionError: surprise)")
    assert "--debug" in result.output
    debug = run("check", str(fnn_ckpt), "--model", "fnn", "--debug")
    assert isinstance(debug.exception, ZeroDivisionError)


def test_a_saved_report_is_still_read(tmp_path, fnn_ckpt):
    out = run("check", str(fnn_ckpt), "--model", "fnn", "--steps", "2", "--json")
    path = tmp_path / "run.json"
    path.write_text(out.stdout)
    assert json.loads(out.stdout)["model_name"] == "fnn"
    assert run("report", str(path)).exit_code == 0


def test_a_report_file_name_over_255_bytes():
    assert_one_sentence(run("report", "y" * 300 + ".json"), "File name too long (yyyy")

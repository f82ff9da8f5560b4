"""Safe loading of checkpoints and model specs for the CLI.

Weights load with ``torch.load(weights_only=True)`` or safetensors.  Nothing is
unpickled with arbitrary code unless the caller passes ``unsafe=True`` (the
CLI's ``--unsafe-load``), because unpickling runs code from the file.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.errors import InputError

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
STRIPPABLE_PREFIXES = ("model.", "module.", "_orig_mod.")


@dataclass
class Loaded:
    """What a checkpoint file held: weights only, or a model with its architecture."""

    kind: str  # "state_dict", "torchscript", "exported" or "module"
    state_dict: dict[str, torch.Tensor] | None = None
    model: nn.Module | None = None
    example_input: Any = None


def load_checkpoint(path: str | Path, unsafe: bool = False) -> Loaded:
    """Read ``path`` as safetensors, TorchScript, torch.export (.pt2) or a torch.save file.

    TorchScript and torch.export files are programs: loading them runs code stored in
    the file, so like pickles of arbitrary objects they load only with ``unsafe=True``.
    """
    path = Path(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # e.g. a file name longer than the file system allows
        raise InputError(f"Cannot open checkpoint {_short(path)}: {exc.strerror or exc}.") from exc
    if not exists:
        raise InputError(f"No such checkpoint file: {path}.")
    if is_dir:
        raise InputError(f"{path} is a directory; give the checkpoint file inside it.")
    if path.suffix == ".safetensors":
        return Loaded("state_dict", state_dict=_load_safetensors(path))
    program = _program_kind(path)
    if program is not None:
        if not unsafe:
            raise InputError(
                f"{path} is a {program} program: loading it runs code stored in the file "
                "(not only weights), so gradscope refused; if you trust the file, pass "
                "--unsafe-load, or save a state_dict and use --model or --model-factory."
            )
        if program == "torch.export":
            return _load_exported(path)
        return Loaded("torchscript", model=_load_torchscript(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise InputError(
                f"{path} is not a checkpoint torch can read ({_first_line(exc)})."
            ) from exc
        raise InputError(
            f"{path} needs to run code from the file to load (it pickles more than tensors), "
            "so gradscope refused; if you trust the file, pass --unsafe-load, which executes "
            "that code."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch.load raises KeyError, EOFError, ... on junk
        raise InputError(
            f"{path} is not a checkpoint torch can read ({type(exc).__name__}: {_first_line(exc)})."
        ) from exc
    if isinstance(obj, nn.Module):
        return Loaded("module", model=obj)
    return Loaded("state_dict", state_dict=extract_state_dict(obj, path))


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 80 else f"{text[:40]}...{text[-30:]}"


def _program_kind(path: Path) -> str | None:
    """"TorchScript" or "torch.export" when ``path`` holds a serialized program, else None."""
    if path.suffix == ".pt2":
        return "torch.export"
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path} is a damaged zip archive ({_first_line(exc)}).") from exc
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "torch.export"
    if any(n.endswith("constants.pkl") or "/code/" in n or n.startswith("code/") for n in names):
        return "TorchScript"
    return None


def _load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged archive raises many types
        raise InputError(
            f"{path} is not a TorchScript file torch can load "
            f"({type(exc).__name__}: {_first_line(exc)})."
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path} is not a valid safetensors file ({_first_line(exc)}).") from exc


def _load_exported(path: Path) -> Loaded:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch.export raises many types for a bad archive
        raise InputError(f"{path} is not a torch.export program ({_first_line(exc)}).") from exc
    example = getattr(program, "example_inputs", None)
    args = example[0] if example else None
    return Loaded("exported", model=program.module(), example_input=args)


def extract_state_dict(obj: Any, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict in ``obj``: itself, or under state_dict/model_state_dict/model."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner:
                return extract_state_dict(inner, path)
    raise InputError(
        f"{path} holds no state_dict: expected a dict of tensors, or one under "
        f"{', '.join(repr(k) for k in STATE_DICT_KEYS)}, got {type(obj).__name__}"
        + (f" with keys {', '.join(map(str, list(obj)[:5]))}" if isinstance(obj, dict) else "")
        + "."
    )


def match_keys(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Strip a Lightning/DDP/compile prefix when that makes the keys match the model."""
    expected = set(model.state_dict())
    if set(state_dict) == expected:
        return state_dict
    for prefix in STRIPPABLE_PREFIXES:
        stripped = {
            (k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()
        }
        if set(stripped) == expected:
            return stripped
    return state_dict


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], model_name: str) -> None:
    """load_state_dict with a one-sentence error naming the keys or the layer that differ."""
    state_dict = match_keys(state_dict, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            parts.append(
                "unexpected " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else "")
            )
        raise InputError(
            f"The checkpoint's keys do not match model {model_name}: {'; '.join(parts)} "
            "(is it a checkpoint of another model? pick the right --model or --model-factory)."
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            layer = key.rsplit(".", 1)[0]
            raise InputError(
                f"Shape mismatch in layer {layer}: the checkpoint's {key} is "
                f"{tuple(state_dict[key].shape)} but model {model_name} expects "
                f"{tuple(tensor.shape)}."
            )
    model.load_state_dict(state_dict)


def import_factory(path: str) -> Callable[[], nn.Module]:
    """``pkg.module:function`` -> the function (it must build a fresh nn.Module)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(
            f"--model-factory {path!r} must look like package.module:function, "
            "e.g. mypkg.models:build_model."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(
            f"--model-factory could not import {module_name!r} ({exc}); is it installed or on "
            "PYTHONPATH?"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise InputError(
            f"--model-factory: importing {module_name!r} failed with "
            f"{type(exc).__name__}: {_first_line(exc)}."
        ) from exc
    try:
        factory = getattr(module, attr, None)
    except Exception:  # noqa: BLE001 - a module __getattr__ that raises
        factory = None
    if not callable(factory):
        raise InputError(f"--model-factory: {module_name} has no function {attr!r}.")
    return factory


def build_from_factory(path: str) -> nn.Module:
    """Import ``pkg.module:function``, call it, and check that it built an ``nn.Module``."""
    factory = import_factory(path)
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise InputError(
            f"--model-factory {path} raised {type(exc).__name__}: {_first_line(exc)}."
        ) from exc
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--model-factory {path} returned {type(model).__name__}, not a torch.nn.Module."
        )
    return model


def nonfinite_weights(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or Inf, with their counts."""
    bad = []
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            count = int((~torch.isfinite(tensor.detach())).sum())
            if count:
                bad.append(f"{name} ({count} of {tensor.numel()})")
    return bad


def first_layer_expectation(model: nn.Module) -> str:
    """What the first layer with weights expects, in words, for input-shape errors."""
    for name, module in model.named_modules():
        kind = getattr(module, "original_name", type(module).__name__)  # TorchScript keeps it
        if kind == "Linear" and isinstance(getattr(module, "in_features", None), int):
            return f"{name} (Linear) expects a last dimension of {module.in_features}"
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}[type(module)]
            return (
                f"{name} ({type(module).__name__}) expects {dims}-d input with "
                f"{module.in_channels} channel(s), e.g. 1,{module.in_channels},"
                + ",".join(["28"] * (dims - 2))
            )
        if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
            return f"{name} ({type(module).__name__}) expects a feature size of {module.input_size}"
        if isinstance(module, nn.Embedding):
            return f"{name} (Embedding) expects integer token ids below {module.num_embeddings}"
    return "the model's first layer expects another shape"

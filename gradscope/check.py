"""`gradscope check`: diagnose a checkpoint without touching the user's training code."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.checkpoint import (
    build_from_factory,
    first_layer_expectation,
    load_checkpoint,
    load_into,
    nonfinite_weights,
)
from gradscope.diagnosis import diagnose
from gradscope.errors import InputError
from gradscope.models import ModelSpec
from gradscope.reference import get_spec
from gradscope.report import Report


def _bce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy(output, target.to(output.dtype))


def _hinge(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.relu(1 - target.to(output.dtype) * output).mean()


LOSSES: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "cross_entropy": nn.functional.cross_entropy,
    "nll": nn.functional.nll_loss,
    "mse": nn.functional.mse_loss,
    "l1": nn.functional.l1_loss,
    "smooth_l1": nn.functional.smooth_l1_loss,
    "bce": _bce,
    "bce_logits": nn.functional.binary_cross_entropy_with_logits,
    "hinge": _hinge,
}

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
}


@dataclass
class CheckOptions:
    """What `gradscope check` was asked to do."""

    checkpoint: Path
    model: str | None = None
    model_factory: str | None = None
    input_shape: tuple[int, ...] | None = None
    batch: Path | None = None
    loss: str | None = None
    steps: int = 20
    lr: float = 0.01
    optimizer: str = "sgd"
    unsafe_load: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    target: str | None = None


def parse_shape(text: str) -> tuple[int, ...]:
    """``1,1,28,28`` -> (1, 1, 28, 28)."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise InputError(
            f"--input-shape {text!r} must be whole numbers separated by commas, e.g. 8,1,28,28."
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"--input-shape {text!r} must be positive whole numbers, e.g. 8,1,28,28.")
    return shape


def _build_model(options: CheckOptions) -> tuple[nn.Module, ModelSpec | None, Any, list[str]]:
    notes: list[str] = []
    loaded = load_checkpoint(options.checkpoint, unsafe=options.unsafe_load)
    spec = get_spec(options.model) if options.model else None
    if loaded.model is not None:
        _refuse_nonfinite(loaded.model)
        if loaded.kind == "torchscript":
            notes.append("TorchScript modules take no forward hooks: activations are not measured")
        return loaded.model, spec, loaded.example_input, notes
    if spec is not None:
        model = spec.factory()
        name = spec.name
    elif options.model_factory:
        model = build_from_factory(options.model_factory)
        name = options.model_factory
    else:
        raise InputError(
            f"{options.checkpoint} holds weights only: say which model they belong to with "
            "--model NAME (see `gradscope models`) or --model-factory package.module:function."
        )
    load_into(model, loaded.state_dict or {}, name)
    _refuse_nonfinite(model)
    return model, spec, None, notes


def _refuse_nonfinite(model: nn.Module) -> None:
    """Weights that are already NaN/Inf are the answer, before any training step."""
    bad = nonfinite_weights(model.state_dict())
    if bad:
        shown = ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else "")
        raise InputError(
            f"The checkpoint's weights hold NaN/Inf values before any training: {shown}; "
            "training from them cannot show anything else (look at the run that saved it)."
        )


def _load_batch(path: Path) -> tuple[Any, Any]:
    if not path.exists():
        raise InputError(f"No such batch file: {path}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a batch file"
        raise InputError(f"{path} is not a batch saved with torch.save ({exc}).") from exc
    if isinstance(obj, dict) and {"input", "target"} <= set(obj):
        return obj["input"], obj["target"]
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    raise InputError(
        f"{path} must hold an (input, target) pair or a dict with 'input' and 'target'."
    )


def _synthetic_target(output: torch.Tensor, loss: str, spec: str | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if spec is not None:
        shape = parse_shape(spec) if "," in spec else None
        if shape is None:
            try:
                classes = int(spec)
            except ValueError:
                raise InputError(
                    f"--target {spec!r} must be a class count (e.g. 10) or a shape (e.g. 8,1)."
                ) from None
            if classes < 1:
                raise InputError(f"--target {spec!r} must be a class count of at least 1.")
            if loss in ("cross_entropy", "nll") and output.dim() >= 1 and (
                classes > output.shape[-1]
            ):
                raise InputError(
                    f"--target {spec!r} asks for {classes} classes but the model outputs "
                    f"{output.shape[-1]} scores per sample."
                )
            return torch.randint(0, classes, output.shape[:1], generator=g)
        check_allocation(shape, "--target")
        return torch.randn(shape, generator=g).to(output.dtype)
    if loss in ("cross_entropy", "nll"):
        return torch.randint(0, output.shape[-1], output.shape[:-1], generator=g)
    if loss in ("bce", "bce_logits"):
        return torch.randint(0, 2, output.shape, generator=g).to(output.dtype)
    if loss == "hinge":
        return torch.randint(0, 2, output.shape, generator=g).to(output.dtype) * 2 - 1
    return torch.randn(output.shape, generator=g).to(output.dtype)


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable; total RAM as a fallback)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 34  # 16 GiB: unknown platform, assume a workstation


def _first_layer_growth(model: nn.Module) -> float:
    """How many times larger than its input the first weighted layer's output is."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return module.out_features / max(module.in_features, 1)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return module.out_channels / max(module.in_channels // module.groups, 1)
        if isinstance(module, nn.Embedding):
            return float(module.embedding_dim)
    return 1.0


def check_allocation(shape: tuple[int, ...], option: str, growth: float = 1.0) -> None:
    """Refuse a synthetic tensor (and the first layer's output) too large for this machine,
    before allocating anything."""
    numel = math.prod(shape)
    # float32 input, its first-layer output, and their gradients.
    needed = 4 * numel * (1 + max(growth, 1.0)) * 2
    available = available_memory()
    if needed > available // 2:
        text = ",".join(str(d) for d in shape)
        raise InputError(
            f"{option} {text} is {numel:.3g} elements (about {_size(needed)} to train on with "
            f"the model's first layer), more than half of the {_size(available)} of memory "
            "available; use a smaller batch."
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _run_forward(model: nn.Module, x: Any) -> Any:
    try:
        with torch.no_grad():
            return model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(
            f"The model rejects input of shape {shape}: {first_layer_expectation(model)} "
            f"(torch said: {str(exc).splitlines()[0][:160]})."
        ) from exc


@dataclass
class PreparedCheck:
    """What `check` trains: the loaded model (untrained), one batch and the loss."""

    model: nn.Module
    x: Any
    y: Any
    loss_fn: Callable[[Any, Any], torch.Tensor]
    spec: ModelSpec | None
    notes: list[str]


def prepare_check(options: CheckOptions) -> PreparedCheck:
    """Load the model and build the batch and loss `check` trains with."""
    if options.loss is not None and options.loss not in LOSSES:
        raise InputError(f"Unknown --loss {options.loss!r}; choose one of {', '.join(LOSSES)}.")
    if not (math.isfinite(options.lr) and options.lr > 0):
        raise InputError(f"--lr must be a finite number above 0, got {options.lr}.")
    if options.input_shape is not None:
        check_allocation(options.input_shape, "--input-shape")
    model, spec, example, notes = _build_model(options)
    loss_name = options.loss or (spec.loss_name if spec else "mse")
    loss_fn = LOSSES.get(loss_name) or (spec.loss_fn if spec else LOSSES["mse"])
    if options.batch is not None:
        x, y = _load_batch(options.batch)
    else:
        notes.append("the diagnosis used a synthetic batch (pass --batch FILE for real data)")
        if options.input_shape is not None:
            growth = _first_layer_growth(model)
            check_allocation(options.input_shape, "--input-shape", growth=growth)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(options.input_shape, generator=g)
            y = None
        elif spec is not None:
            x, y = spec.example_batch()
            if options.target is not None:
                y = None
        elif isinstance(example, (tuple, list)) and example and torch.is_tensor(example[0]):
            x, y = example[0], None
        else:
            raise InputError(
                "Without --batch or --model, gradscope cannot guess the input: pass "
                "--input-shape, e.g. --input-shape 8,1,28,28."
            )
        if y is None:
            y = _synthetic_target(_run_forward(model, x), loss_name, options.target)
    _run_forward(model, x)
    return PreparedCheck(model, x, y, loss_fn, spec, notes)


def run_check(
    options: CheckOptions,
    progress: Callable[[int], None] | None = None,
    prepared: PreparedCheck | None = None,
) -> Report:
    """Load, build a batch, train a copy for ``options.steps`` instrumented steps."""
    prepared = prepared or prepare_check(options)
    model, spec, notes = prepared.model, prepared.spec, list(prepared.notes)
    x, y, loss_fn = prepared.x, prepared.y, prepared.loss_fn
    # The model was built from the file here, so training it changes nothing of the user's.
    trained = model
    params = [p for p in trained.parameters() if p.requires_grad]
    if not params:
        raise InputError("The model has no trainable parameters to diagnose.")
    optimizer = OPTIMIZERS[options.optimizer](params, options.lr)
    report = diagnose(
        trained,
        (x, y),
        loss_fn,
        optimizer=optimizer,
        steps=options.steps,
        config=options.config,
        progress=progress,
        name=spec.name if spec else type(model).__name__,
    )
    report.notes.extend(notes)
    return report

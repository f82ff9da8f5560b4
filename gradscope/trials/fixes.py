"""Apply one suggested fix to a copy of the model (or to the trial's training loop).

Each applier takes the copy and a :class:`FixContext` and returns a :class:`Change`
that says what was changed; a fix that does not fit the model raises
:class:`NotApplicable` with the reason.  Fixes that are edits of the user's own code
(loss numerics, the graph, the GAN loss, a residual architecture) are never guessed:
they raise :class:`NeedsCodeChange`.  No suggestion's code is executed.
"""

from __future__ import annotations

import ast
import copy
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradscope.findings import Finding, Suggestion
from gradscope.report import Report

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RNN_TYPES = (nn.RNN, nn.LSTM, nn.GRU)
SATURATING = (nn.Sigmoid, nn.Tanh)
#: Suggestion kinds that are edits of the user's code: listed with their snippet, not run.
CODE_CHANGE_KINDS = frozenset(
    {
        "fix_loss_numerics",
        "check_graph",
        "use_nonsaturating_loss",
        "add_residual",
        "reset_gradients",
        "fix_loss_input",
        "check_targets",
    }
)


class NotApplicable(Exception):
    """The fix does not fit this model; the message says why."""


class NeedsCodeChange(Exception):
    """The fix is an edit of the user's code; the suggestion's snippet shows it."""


@dataclass
class Probe:
    """One forward pass of the unchanged model: leaf modules in call order, output shapes."""

    order: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)


@dataclass
class FixContext:
    """What an applier may look at: the finding, its suggestion, the report, the data."""

    finding: Finding
    suggestion: Suggestion
    report: Report
    inputs: list[Any]
    probe: Probe
    custom_step: bool = False


@dataclass
class Change:
    """What one fix changed: in the model copy, and in the trial's loop and optimizer."""

    model: nn.Module
    layers: list[str]
    description: str
    clip: float | None = None
    normalize: tuple[torch.Tensor, torch.Tensor] | None = None
    lr_factor: float = 1.0
    weight_decay: float | None = None
    #: every param group's weight decay times this (lower_weight_decay).
    weight_decay_factor: float | None = None
    #: old layer name -> the module that now holds it (a layer wrapped together with the
    #: norm layer added after it): a finding on that module or inside it, the norm layer
    #: included, is the old layer's finding still there.
    renames: dict[str, str] = field(default_factory=dict)
    #: the user's own loss or training step for this variant (a code change).
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    train_step: Callable[..., torch.Tensor] | None = None


@dataclass
class CodeChange:
    """The user's own edit for a fix that needs a code change (``trial(code_changes=...)``).

    Any field left None stays as it is: the model copy, the loss, the training step.
    """

    model: nn.Module | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    train_step: Callable[..., torch.Tensor] | None = None
    description: str = "the user's code change"


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy without gradscope's hooks (the user's own hooks are kept)."""
    if isinstance(model, torch.jit.ScriptModule):
        # deepcopy of a ScriptModule gives parameters that are not leaves (torch 2.13),
        # which no optimizer takes; a save/load round trip gives a true copy.
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location=_device_of(model))
    clone = copy.deepcopy(model)
    for module in clone.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, fn in hooks.items() if _from_gradscope(fn)]:
                del hooks[key]
    return clone


def _device_of(model: nn.Module) -> torch.device | None:
    first = next(model.parameters(), None)
    return first.device if first is not None else None


def _from_gradscope(fn: Any) -> bool:
    func = getattr(fn, "__func__", fn)
    return str(getattr(func, "__module__", "")).startswith("gradscope")


def probe(model: nn.Module, x: Any, call: Callable[[nn.Module, Any], Any]) -> Probe:
    """Run ``model`` once on a copy (no_grad) and note each leaf module's call and output shape."""
    clone = copy_model(model)
    result = Probe()
    handles = []
    for name, module in clone.named_modules():
        if name and next(module.children(), None) is None:

            def hook(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
                if name not in result.shapes:
                    result.order.append(name)
                    result.shapes[name] = tuple(out.shape) if torch.is_tensor(out) else None

            try:
                handles.append(module.register_forward_hook(hook))
            except RuntimeError:  # TorchScript modules take no hooks: no shapes known
                return result
    try:
        with torch.no_grad():
            call(clone, x)
    except Exception:  # noqa: BLE001 - a model the probe cannot run still gets a trial
        pass
    finally:
        for handle in handles:
            handle.remove()
    return result


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _snippet_layers(model: nn.Module, suggestion: Suggestion, var: str = "name") -> list[str]:
    """The module names a printed loop lists (``for name in ["0", "2"]:``; ``var`` is the
    loop's variable), those the model has."""
    match = re.search(rf"for {var} in (\[[^\]]*\])", suggestion.code)
    if not match:
        return []
    try:
        names = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return []
    known = dict(model.named_modules())
    return [n for n in names if isinstance(n, str) and n in known]


def _gain_name(model: nn.Module, suggestion: Suggestion) -> str:
    match = re.search(r'calculate_gain\("(\w+)"\)', suggestion.code)
    if match:
        return match.group(1)
    return "tanh" if any(isinstance(m, nn.Tanh) for m in model.modules()) else "sigmoid"


def _init_layers(
    model: nn.Module, names: list[str], init: Callable[[torch.Tensor], Any]
) -> list[str]:
    """Re-initialise the weights of ``names`` (all Linear/Conv/RNN layers if empty)."""
    if not names:
        names = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_TYPES + RNN_TYPES)]
    done = []
    with torch.no_grad():
        for name in names:
            module = model.get_submodule(name)
            touched = False
            for pname, param in module.named_parameters(recurse=False):
                if pname.startswith("weight") and param.dim() >= 2:
                    init(param)
                    touched = True
                elif pname.startswith("bias"):
                    nn.init.zeros_(param)
            if touched:
                done.append(name)
    if not done:
        raise NotApplicable("the model has no Linear, Conv or RNN weights to re-initialise")
    return done


def kaiming_init(model: nn.Module, ctx: FixContext) -> Change:
    """Kaiming-normal weights and zero biases on the layers the suggestion lists."""
    layers = _init_layers(
        model,
        _snippet_layers(model, ctx.suggestion),
        lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    )
    return Change(model, layers, "Kaiming-normal weights, zero biases")


def xavier_init(model: nn.Module, ctx: FixContext) -> Change:
    """Xavier-uniform weights (gain of the model's activation) and zero biases."""
    gain_name = _gain_name(model, ctx.suggestion)
    gain = nn.init.calculate_gain(gain_name)
    layers = _init_layers(
        model,
        _snippet_layers(model, ctx.suggestion),
        lambda w: nn.init.xavier_uniform_(w, gain=gain),
    )
    return Change(model, layers, f"Xavier-uniform weights (gain {gain_name}), zero biases")


def reset_norm_gains(model: nn.Module, ctx: FixContext) -> Change:
    """Gains (weights) of 1 in the normalisation layers the suggestion lists."""
    names = _snippet_layers(model, ctx.suggestion)
    done = []
    with torch.no_grad():
        for name in names:
            weight = getattr(model.get_submodule(name), "weight", None)
            if isinstance(weight, torch.Tensor):
                nn.init.ones_(weight)
                done.append(name)
    if not done:
        raise NotApplicable("no listed normalisation layer has a gain (weight) to reset")
    return Change(model, done, "normalisation gains set to 1")


def orthogonal_init(model: nn.Module, ctx: FixContext) -> Change:
    """Orthogonal recurrent (weight_hh) matrices in the RNN the finding names, or in all."""
    rnns = [(n, m) for n, m in model.named_modules() if isinstance(m, RNN_TYPES)]
    chosen = [(n, m) for n, m in rnns if n == ctx.finding.layer] or rnns
    if not chosen:
        raise NotApplicable("the model has no RNN/LSTM/GRU layer with recurrent weights")
    with torch.no_grad():
        for _, module in chosen:
            for pname, param in module.named_parameters(recurse=False):
                if pname.startswith("weight_hh"):
                    nn.init.orthogonal_(param)
    return Change(model, [n for n, _ in chosen], "orthogonal recurrent weights (weight_hh)")


def random_init(model: nn.Module, ctx: FixContext) -> Change:
    """Random init for every weight matrix (any module's: recurrent and attention weights
    too) whose rows are all identical, its matching bias to zero, as printed."""
    relu = "kaiming" in ctx.suggestion.code
    gain = nn.init.calculate_gain(_gain_name(model, ctx.suggestion)) if not relu else 1.0
    layers = []
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, weight in module.named_parameters(recurse=False):
                if weight.dim() < 2:
                    continue
                rows = weight.detach().flatten(1)
                if not torch.allclose(rows, rows[:1].expand_as(rows)):
                    continue
                if isinstance(module, nn.RNNBase):
                    nn.init.xavier_uniform_(weight)
                elif relu:
                    nn.init.kaiming_normal_(weight, nonlinearity="relu")
                else:
                    nn.init.xavier_uniform_(weight, gain=gain)
                bias = getattr(module, name.replace("weight", "bias"), None)
                if isinstance(bias, torch.Tensor):
                    nn.init.zeros_(bias)
                if module_name not in layers:
                    layers.append(module_name)
    if not layers:
        raise NotApplicable("no weight matrix has identical rows")
    return Change(model, layers, "random init of the weight matrices with identical rows")


def use_relu(model: nn.Module, ctx: FixContext) -> Change:
    """Hidden nn.Sigmoid/nn.Tanh modules become nn.ReLU, then Kaiming init as printed."""
    output = ctx.probe.order[-1] if ctx.probe.order else None
    # The printed list of hidden activations (an output's sigmoid/tanh stays), else all.
    hidden = _snippet_layers(model, ctx.suggestion, var="act") or [
        n for n, m in model.named_modules() if isinstance(m, SATURATING) and n and n != output
    ]
    if not hidden:
        raise NotApplicable(
            "no hidden nn.Sigmoid/nn.Tanh module to swap (forward() may call torch.sigmoid/"
            "tanh itself: edit it there)"
        )
    for name in hidden:
        _set(model, name, nn.ReLU())
    layers = _init_layers(
        model,
        _snippet_layers(model, ctx.suggestion),
        lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    )
    return Change(model, hidden + layers, "ReLU instead of Sigmoid/Tanh, Kaiming init")


def _norm_targets(model: nn.Module, ctx: FixContext) -> list[str]:
    """Linear/Conv layers the finding names (else all), without the model's output layer."""
    weights = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_TYPES)]
    called = [n for n in ctx.probe.order if n in weights]
    last = called[-1] if called else (weights[-1] if weights else None)
    named = ctx.finding.evidence.get("layers")
    wanted = [n for n in named if n in weights] if isinstance(named, list) else []
    return [n for n in (wanted or weights) if n != last]


def _add_norm(model: nn.Module, ctx: FixContext, layernorm: bool) -> Change:
    added, skipped = [], []
    renames = {}
    for name in _norm_targets(model, ctx):
        module = model.get_submodule(name)
        shape = ctx.probe.shapes.get(name)
        if shape is None:
            skipped.append(f"{name} (not called, or output not a tensor)")
            continue
        width = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
        norm: nn.Module | None = None
        if layernorm:
            if isinstance(module, nn.Linear):
                norm = nn.LayerNorm(width)
        elif isinstance(module, (nn.Linear, nn.Conv1d)) and len(shape) == (
            2 if isinstance(module, nn.Linear) else 3
        ):
            norm = nn.BatchNorm1d(width)
        elif isinstance(module, nn.Conv2d) and len(shape) == 4:
            norm = nn.BatchNorm2d(width)
        elif isinstance(module, nn.Conv3d) and len(shape) == 5:
            norm = nn.BatchNorm3d(width)
        if norm is None:
            skipped.append(f"{name} ({type(module).__name__} output {list(shape)})")
            continue
        norm = norm.to(device=module.weight.device, dtype=module.weight.dtype)
        _set(model, name, nn.Sequential(module, norm))
        renames[name] = name  # the wrapper: the layer at ``name.0``, its norm at ``name.1``
        added.append(name)
    kind = "LayerNorm" if layernorm else "BatchNorm"
    if not added:
        why = "; ".join(skipped) if skipped else "no hidden Linear/Conv layer"
        raise NotApplicable(f"no layer whose output shape fits {kind}: {why}")
    return Change(model, added, f"{kind} after each listed layer", renames=renames)


def add_batchnorm(model: nn.Module, ctx: FixContext) -> Change:
    """BatchNorm after the hidden Linear/Conv layers whose output shapes allow it."""
    return _add_norm(model, ctx, layernorm=False)


def add_layernorm(model: nn.Module, ctx: FixContext) -> Change:
    """LayerNorm after the hidden Linear layers."""
    return _add_norm(model, ctx, layernorm=True)


def use_lstm_or_gru(model: nn.Module, ctx: FixContext) -> Change:
    """The vanilla nn.RNN becomes an nn.LSTM of the same sizes (chrono forget-gate bias)."""
    rnns = [(n, m) for n, m in model.named_modules() if type(m) is nn.RNN]
    chosen = [(n, m) for n, m in rnns if n == ctx.finding.layer] or rnns[:1]
    if not chosen:
        raise NotApplicable("the model has no vanilla nn.RNN module to replace")
    name, rnn = chosen[0]
    sizes = {
        "input_size": rnn.input_size,
        "hidden_size": rnn.hidden_size,
        "num_layers": rnn.num_layers,
        "bias": rnn.bias,
        "batch_first": rnn.batch_first,
        "dropout": rnn.dropout,
        "bidirectional": rnn.bidirectional,
    }
    device, dtype = rnn.weight_ih_l0.device, rnn.weight_ih_l0.dtype
    lstm = nn.LSTM(**sizes).to(device=device, dtype=dtype)
    steps = ctx.finding.evidence.get("sequence_length")
    note = ""
    if isinstance(steps, int) and steps > 2 and rnn.bias:
        hidden = rnn.hidden_size
        with torch.no_grad():
            for pname, bias in lstm.named_parameters():
                if pname.startswith("bias_ih"):
                    bias[hidden : 2 * hidden] = math.log(steps - 1)
                elif pname.startswith("bias_hh"):
                    bias[hidden : 2 * hidden] = 0.0
        note = f", forget bias log({steps - 1})"
    _set(model, name, lstm)
    return Change(model, [name], f"nn.LSTM of the same sizes instead of nn.RNN{note}")


def _grad_norm_median(report: Report) -> float | None:
    history = report.history
    if history is None or not history.records:
        return None
    norms = history.grad_series("grad_l2")
    total = norms.nan_to_num(0.0).pow(2).sum(dim=1).sqrt()
    finite = total[torch.isfinite(total) & (total > 0)]
    return float(finite.median()) if finite.numel() else None


def clip_grad_norm(model: nn.Module, ctx: FixContext) -> Change:
    """Clip the total gradient norm (in the trial loop) at the report's median norm."""
    observed = _grad_norm_median(ctx.report)
    max_norm = observed if observed is not None else 1.0
    where = "median gradient norm of the report" if observed is not None else "default"
    text = f"clip_grad_norm_(max_norm={max_norm:.3g}, the {where})"
    return Change(model, [], text, clip=max_norm)


def scale_lr(model: nn.Module, ctx: FixContext) -> Change:
    """``lower_lr`` and ``raise_lr``: every param group's learning rate times the factor
    the suggestion printed (its ``settings["lr_factor"]``; 1/10 or 10 when it names
    none)."""
    default = 10.0 if ctx.suggestion.kind == "raise_lr" else 0.1
    factor = float(ctx.suggestion.settings.get("lr_factor", default))
    text = "learning rate / 10" if factor == 0.1 else f"learning rate x {factor:.3g}"
    return Change(model, [], text, lr_factor=factor)


def weight_decay(model: nn.Module, ctx: FixContext) -> Change:
    """Weight decay 1e-4 (or 10x the optimizer's, when it has some)."""
    return Change(model, [], "weight decay 1e-4 (10x if already set)", weight_decay=1e-4)


def lower_weight_decay(model: nn.Module, ctx: FixContext) -> Change:
    """Every param group's weight decay times the factor the suggestion printed."""
    factor = float(ctx.suggestion.settings.get("weight_decay_factor", 0.01))
    return Change(model, [], f"weight decay x {factor:.3g}", weight_decay_factor=factor)


def normalize_inputs(model: nn.Module, ctx: FixContext) -> Change:
    """Standardise each input feature with the mean/std over the trial's batches."""
    if ctx.custom_step:
        raise NotApplicable("a custom train_step feeds the model itself")
    if not all(torch.is_tensor(x) and x.is_floating_point() for x in ctx.inputs):
        raise NotApplicable("the inputs are not floating-point tensors")
    data = torch.cat([x.detach().float() for x in ctx.inputs])
    mean, std = data.mean(dim=0, keepdim=True), data.std(dim=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return Change(model, [], "inputs standardised per feature", normalize=(mean, std))


def freeze_unused(model: nn.Module, ctx: FixContext) -> Change:
    """Freeze the parameters of a module that forward() never calls."""
    names = ctx.finding.evidence.get("parameters") or []
    named = dict(model.named_parameters())
    missing = [n for n in names if n not in named]
    if not names or missing:
        raise NotApplicable(
            f"the finding names no parameter of this model ({', '.join(missing) or 'none'})"
        )
    for name in names:
        named[name].requires_grad_(False)
    return Change(model, [ctx.finding.layer or ""], f"froze {', '.join(names)}")


APPLIERS: dict[str, Callable[[nn.Module, FixContext], Change]] = {
    "freeze_unused": freeze_unused,
    "kaiming_init": kaiming_init,
    "xavier_init": xavier_init,
    "orthogonal_init": orthogonal_init,
    "reset_norm_gains": reset_norm_gains,
    "random_init": random_init,
    "use_relu": use_relu,
    "add_batchnorm": add_batchnorm,
    "add_layernorm": add_layernorm,
    "use_lstm_or_gru": use_lstm_or_gru,
    "clip_grad_norm": clip_grad_norm,
    "lower_lr": scale_lr,
    "raise_lr": scale_lr,
    "weight_decay": weight_decay,
    "add_weight_decay": weight_decay,
    "lower_weight_decay": lower_weight_decay,
    "normalize_inputs": normalize_inputs,
    "normalise_inputs": normalize_inputs,
}


#: Fixes that change the training loop or optimizer, not the model.
LOOP_KINDS = frozenset(
    {"clip_grad_norm", "lower_lr", "raise_lr", "weight_decay", "add_weight_decay"}
    | {"lower_weight_decay"}
    | {"normalize_inputs", "normalise_inputs"}
)


def apply_code_change(
    model: nn.Module, made: Callable[[nn.Module], nn.Module | CodeChange]
) -> Change:
    """Run the user's code change on ``model`` (a copy) and describe it as a Change."""
    result = made(model)
    if isinstance(result, nn.Module):
        result = CodeChange(model=result)
    if not isinstance(result, CodeChange):
        raise NotApplicable(
            f"the code change returned {type(result).__name__}, not a Module or CodeChange"
        )
    return Change(
        result.model if result.model is not None else model,
        [],
        result.description,
        loss_fn=result.loss_fn,
        train_step=result.train_step,
    )


def apply_fix(
    model: nn.Module,
    ctx: FixContext,
    code_changes: dict[str, Callable[[nn.Module], nn.Module | CodeChange]] | None = None,
) -> Change:
    """Apply ``ctx.suggestion`` to ``model`` (a copy, edited in place).

    A kind in ``code_changes`` is applied by the user's callable instead (it gets the
    copy, returns the changed model or a :class:`CodeChange`).
    """
    kind = ctx.suggestion.kind
    if code_changes and kind in code_changes:
        return apply_code_change(model, code_changes[kind])
    if kind in CODE_CHANGE_KINDS:
        raise NeedsCodeChange(kind)
    applier = APPLIERS.get(kind)
    if applier is None:
        raise NotApplicable(f"no automatic fix for suggestion kind {kind!r}")
    if isinstance(model, torch.jit.ScriptModule) and kind not in LOOP_KINDS:
        raise NotApplicable(
            "a TorchScript model cannot be edited: apply the fix to the Python model, "
            "then script it again"
        )
    return applier(model, ctx)

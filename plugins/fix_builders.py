"""Fix builders shared by the built-in detectors (not a plugin itself).

Each builder turns a finding into one :class:`~gradscope.Suggestion` whose snippet names
the model's real modules, so it can be pasted as it is.  Which fixes a finding gets, and
in which order, is decided next to the detector that wrote its evidence (each detector
module's ``plan``); :func:`suggest` runs a plan.
"""

from __future__ import annotations

import keyword
import math
import statistics
from collections.abc import Callable
from dataclasses import replace

from gradscope import Finding, Suggestion
from gradscope.modelinfo import LayerInfo, ModelInfo
from gradscope_plugins.judgement import fmt, followed_by_norm


def _is_attr_path(name: str) -> bool:
    """True when ``a.b.c`` can be written as attribute access (no ``1``, ``class``, ``"``)."""
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in name.split("."))


def _ref(info: ModelInfo, name: str, var: str | None = None) -> str:
    """Python that reaches module ``name`` of the model (names are quoted with ``repr``)."""
    var = var or info.var
    if name == info.model_name:
        return var
    if _is_attr_path(name):
        return f"{var}.{name}"
    return f"{var}.get_submodule({name!r})"


def _assign(info: ModelInfo, name: str, value: str) -> str:
    """A statement that replaces module ``name`` of the model with ``value``."""
    if _is_attr_path(name):
        return f"{info.var}.{name} = {value}"
    parent, _, last = name.rpartition(".")
    owner = _ref(info, parent) if parent else info.var
    return f"setattr({owner}, {last!r}, {value})"


def _comment(text: object) -> str:
    """``text`` safe inside a ``#`` comment: line breaks and control characters escaped."""
    value = str(text)
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in value)


def _weight_layers(info: ModelInfo, names: list[str] | None = None) -> list[LayerInfo]:
    layers = [
        layer
        for layer in info.layers
        if layer.role in ("weight", "vanilla_rnn", "gated_rnn")
        and any(p.endswith("weight") or "weight_" in p for p in layer.params)
    ]
    if names:
        chosen = [layer for layer in layers if layer.name in names]
        return chosen or layers
    return layers


def _init_loop(info: ModelInfo, layers: list[LayerInfo], init_call: str) -> str:
    """Code that re-initialises every weight matrix of ``layers`` (a recurrent layer has
    several: ``weight_ih_l0``, ``weight_hh_l0``, ...) and zeroes their biases."""
    names = ", ".join(repr(layer.name) for layer in layers)
    return "\n".join(
        [
            "import torch.nn as nn",
            "",
            f"for name in [{names}]:",
            f"    for pname, p in {info.var}.get_submodule(name).named_parameters(recurse=False):",
            "        if p.dim() >= 2:  # weight matrices (an RNN/LSTM has several)",
            f"            {init_call.format(w='p')}",
            "        elif pname.startswith('bias'):",
            "            nn.init.zeros_(p)",
        ]
    )


def use_relu(finding: Finding, info: ModelInfo) -> Suggestion:
    """Swap saturating activations for ReLU, with the Kaiming init ReLU layers need."""
    acts = sorted({layer.type for layer in info.layers if layer.role in ("sigmoid", "tanh")})
    kinds = ", ".join(f"nn.{a}" for a in acts if _is_attr_path(a)) or "nn.Sigmoid, nn.Tanh"
    layers = _weight_layers(info)
    hidden = hidden_saturating(info)
    swap = (
        [
            f"for act in {hidden!r}:  # hidden sigmoid/tanh modules; an output's stays",
            '    parent, _, child = act.rpartition(".")',
            f"    owner = {info.var}.get_submodule(parent) if parent else {info.var}",
            "    setattr(owner, child, nn.ReLU())",
            "# if forward() calls torch.sigmoid/tanh itself, use torch.relu there",
        ]
        if hidden
        else [
            "def use_relu(module: nn.Module) -> None:",
            "    for name, child in module.named_children():",
            f"        if isinstance(child, ({kinds},)):",
            "            setattr(module, name, nn.ReLU())",
            "        else:",
            "            use_relu(child)",
            "",
            f"use_relu({info.var})  # if forward() calls torch.sigmoid/tanh, use torch.relu there",
        ]
    )
    code = "\n".join(
        [
            "import torch.nn as nn",
            "",
            *swap,
            "# ReLU layers keep their signal only with Kaiming-scaled weights:",
            _init_loop(info, layers, 'nn.init.kaiming_normal_({w}, nonlinearity="relu")').split(
                "\n", 2
            )[2],
        ]
    )
    ratio = finding.evidence.get("ratio_to_later_layers")
    return Suggestion(
        kind="use_relu",
        title=f"Replace {'/'.join(acts) or 'the saturating activations'} with ReLU (Kaiming init)",
        why=(
            f"{'/'.join(acts) or 'Sigmoid/Tanh'} passes back at most 0.25 (sigmoid) or 1 (tanh) of "
            "the gradient per layer, so it fades with depth"
            + (f" (here down to {fmt(ratio)} of the later layers')" if ratio else "")
            + "; ReLU passes it unchanged wherever the unit is active, and Kaiming init keeps "
            "the signal's size through the ReLU layers."
        ),
        code=code,
    )


def hidden_saturating(info: ModelInfo) -> list[str]:
    """The sigmoid/tanh modules a weight layer of the same part of the model is called
    after (a model trained in parts, a GAN's players, is judged part by part; a part is the
    top-level module): hidden activations, not an output's squashing (an autoencoder's
    final Sigmoid, a generator's Tanh)."""
    parted = len(set(info.parts.values())) >= 2

    def part(name: str) -> str:
        return name.split(".")[0] if parted else ""

    out = []
    for k, layer in enumerate(info.layers):
        if layer.role not in ("sigmoid", "tanh") or layer.name == info.model_name:
            continue
        later = info.layers[k + 1 :]
        if any(o.role == "weight" and part(o.name) == part(layer.name) for o in later):
            out.append(layer.name)
    return out


def kaiming_init(finding: Finding, info: ModelInfo) -> Suggestion:
    """He/Kaiming init for ReLU networks."""
    layers = _weight_layers(info)
    return Suggestion(
        kind="kaiming_init",
        title="Initialise the weights with Kaiming (He) init",
        why=(
            "Kaiming init scales each layer's weights by sqrt(2 / fan_in), which keeps the "
            "signal and the gradient the same size through every ReLU layer"
            + _init_scale_note(finding)
            + "."
        ),
        code=_init_loop(info, layers, 'nn.init.kaiming_normal_({w}, nonlinearity="relu")'),
    )


def xavier_init(finding: Finding, info: ModelInfo) -> Suggestion:
    """Xavier/Glorot init for tanh/sigmoid networks."""
    layers = _weight_layers(info)
    gain = "tanh" if "tanh" in info.roles() else "sigmoid"
    return Suggestion(
        kind="xavier_init",
        title="Initialise the weights with Xavier (Glorot) init",
        why=(
            "Xavier init keeps the variance of activations and gradients equal across "
            f"{gain} layers, so they neither shrink nor grow with depth"
            + _init_scale_note(finding)
            + "."
        ),
        code=_init_loop(
            info, layers, f"nn.init.xavier_uniform_({{w}}, gain=nn.init.calculate_gain({gain!r}))"
        ),
    )


#: Normalisation gains (weight RMS) below this start every normalised output ~10x too
#: small; libraries initialise them to 1.
TINY_NORM_GAIN = 0.1


def tiny_gains(gains: dict[str, float]) -> dict[str, float]:
    """The normalisation layers of ``gains`` (layer -> gain RMS) whose gains are tiny."""
    return {name: rms for name, rms in gains.items() if rms < TINY_NORM_GAIN}


def tiny_norm_gains(finding: Finding) -> list[str]:
    """The normalisation layers of the finding's evidence whose gains started tiny."""
    return list(tiny_gains(finding.evidence.get("norm_gains") or {}))


def has_tiny_norm_gains(finding: Finding, info: ModelInfo) -> bool:
    """Whether some normalisation layer of the finding's evidence started with tiny gains."""
    return bool(tiny_norm_gains(finding))


def reset_norm_gains(finding: Finding, info: ModelInfo) -> Suggestion:
    """Start the normalisation layers' gains at 1 (their scale is what shrinks the signal)."""
    tiny = tiny_gains(finding.evidence.get("norm_gains") or {})
    names = list(tiny)
    rms = statistics.median(tiny.values()) if tiny else math.nan
    listed = ", ".join(repr(name) for name in names)
    return Suggestion(
        kind="reset_norm_gains",
        title="Start the normalisation layers' gains (their weight) at 1",
        why=(
            f"{len(names)} normalisation layers start with gains of RMS about {fmt(rms)} "
            "instead of 1: each multiplies its normalised output, and so the gradient back "
            "through it, by that much, so signal and gradient shrink at every one of them; "
            "PyTorch initialises them to 1."
        ),
        code="\n".join(
            [
                "import torch.nn as nn",
                "",
                f"for name in [{listed}]:",
                f"    nn.init.ones_({info.var}.get_submodule(name).weight)",
            ]
        ),
    )


def scales(finding: Finding) -> list[float]:
    """The finite init scales in a finding's evidence (one number or one per layer)."""
    given = finding.evidence.get("init_scale")
    values = given.values() if isinstance(given, dict) else [given]
    return [v for v in values if isinstance(v, float) and math.isfinite(v)]


#: An init scale (weight RMS x sqrt(fan_in)) above this, twice Kaiming's 1.41 and more:
#: weights that started too large (a plan then rescales them first).
TOO_LARGE_INIT = 3.0


#: A loss multiplier from which ``lower_lr`` names it as the reason for its rate.
LOSS_MULTIPLIER_SHOWN = 10.0


#: The data's root mean square above which inputs count as unscaled (standardised data
#: has about 1, images in [0, 1] about 0.5; raw pixel values 0-255 about 100).
UNSCALED_INPUTS = 4.0


def inputs_unscaled(finding: Finding) -> bool:
    """Whether the finding's evidence shows data larger than :data:`UNSCALED_INPUTS`."""
    rms = finding.evidence.get("data_rms")
    return isinstance(rms, float) and math.isfinite(rms) and rms > UNSCALED_INPUTS


#: What unscaled inputs do, per finding kind (the rest of normalize_inputs' why).
_UNSCALED_HARM = {
    "saturated_activation": (
        "and push the sigmoid/tanh units to their flat ends, where almost no gradient "
        "passes. Scaling the data removes the cause; BatchNorm or another activation "
        "would only work around it."
    ),
    "exploding_gradient": (
        "and every signal and gradient after them is that much larger: the gradients "
        "dwarf the weights. Scaling the data removes the cause; clipping or a lower rate "
        "would only shrink the steps."
    ),
}


def normalize_inputs(finding: Finding, info: ModelInfo) -> Suggestion:
    """Standardise the data (the cause when unscaled inputs saturate the first units)."""
    rms, layer = finding.evidence.get("data_rms"), finding.evidence.get("data_layer")
    return Suggestion(
        kind="normalize_inputs",
        title="Standardise the inputs: zero mean and unit variance per feature",
        why=(
            f"The data reaches the first layer ({layer or '?'}) with a root mean square of "
            f"{fmt(rms)} (standardised data has about 1), so the first weighted sums are large "
            + _UNSCALED_HARM.get(finding.kind, _UNSCALED_HARM["saturated_activation"])
        ),
        code="\n".join(
            [
                "# x_train: the training inputs (all of them, or a large sample). Compute the",
                "# statistics once and apply the same mean and std to every batch you feed the",
                "# model, in training and in evaluation.",
                "mean = x_train.mean(dim=0, keepdim=True)",
                "std = x_train.std(dim=0, keepdim=True).clamp_min(1e-6)",
                "x_train = (x_train - mean) / std",
            ]
        ),
    )


def init_for(info: ModelInfo) -> Builder:
    """The initialisation that suits the model's activations: Xavier for sigmoid/tanh
    layers without ReLU, Kaiming otherwise."""
    roles = info.roles()
    return xavier_init if roles & {"sigmoid", "tanh"} and "relu" not in roles else kaiming_init


def started_too_large(finding: Finding) -> bool:
    """Whether some layer of the finding's evidence started above :data:`TOO_LARGE_INIT`."""
    return any(v > TOO_LARGE_INIT for v in scales(finding))


def _init_scale_note(finding: Finding) -> str:
    finite = scales(finding)
    if not finite:
        return ""
    return (
        f" (the weights here start at {fmt(max(finite))} x 1/sqrt(fan_in); Kaiming uses 1.41, "
        "Xavier about 1)"
    )


def orthogonal_init(finding: Finding, info: ModelInfo) -> Suggestion:
    """Orthogonal recurrent weights."""
    rnns = [layer for layer in info.layers if layer.role in ("vanilla_rnn", "gated_rnn")]
    target = rnns[0].name if rnns else None
    ref = _ref(info, target) if target else info.var
    code = "\n".join(
        [
            "import torch.nn as nn",
            "",
            f"for name, param in {ref}.named_parameters():",
            '    if "weight_hh" in name:',
            "        nn.init.orthogonal_(param)",
        ]
    )
    return Suggestion(
        kind="orthogonal_init",
        title="Initialise the recurrent weights as orthogonal matrices",
        why=(
            "An orthogonal recurrent matrix keeps the hidden state's size across time steps, "
            "so gradients neither vanish nor explode through time at the start of training."
        ),
        code=code,
    )


def use_lstm_or_gru(finding: Finding, info: ModelInfo) -> Suggestion:
    """A gated recurrent layer instead of a vanilla RNN."""
    rnn = next((layer for layer in info.layers if layer.role == "vanilla_rnn"), None)
    if rnn is None:
        size = "input_size=..., hidden_size=..."
        ref = f"{info.var}.rnn"
        target = "rnn"
    else:
        size = (
            f"input_size={rnn.size.get('input_size', '...')}, "
            f"hidden_size={rnn.size.get('hidden_size', '...')}, "
            f"num_layers={rnn.size.get('num_layers', 1)}, "
            f"batch_first={bool(rnn.size.get('batch_first', 0))}"
        )
        ref = _ref(info, rnn.name)
        target = rnn.name
    steps = finding.evidence.get("sequence_length")
    lines = [
        "import torch",
        "import torch.nn as nn",
        "",
        _assign(info, target, f"nn.LSTM({size})") + "  # or nn.GRU(...)",
        "# forward(): `out, _ = self.rnn(x)` works for RNN, LSTM and GRU alike",
    ]
    if isinstance(steps, int) and steps > 2 and rnn is not None:
        hidden = rnn.size.get("hidden_size", 0)
        lines += [
            f"# open the forget gates so the cell keeps ~1 - 1/{steps - 1} of its state per step",
            f"# (forget bias log({steps - 1}), as in chrono init, Tallec & Ollivier 2018)",
            "with torch.no_grad():",
            f"    for name, bias in {ref}.named_parameters():",
            '        if name.startswith("bias_ih"):',
            f"            bias[{hidden}:{2 * hidden}] = {math.log(steps - 1):.3f}",
            '        elif name.startswith("bias_hh"):',
            f"            bias[{hidden}:{2 * hidden}] = 0.0",
        ]
    code = "\n".join(lines)
    return Suggestion(
        kind="use_lstm_or_gru",
        title="Use an LSTM or GRU instead of the vanilla RNN",
        why=(
            "A vanilla RNN multiplies the gradient by the same matrix and tanh slope at every "
            "time step, so over long sequences it fades; LSTM/GRU gates carry it through an "
            "additive cell path."
        ),
        code=code,
    )


def clip_grad_norm(finding: Finding, info: ModelInfo) -> Suggestion:
    """Gradient norm clipping, placed correctly (after unscaling with a GradScaler)."""
    if info.has_scaler:
        lines = [
            "scaler.scale(loss).backward()",
            f"scaler.unscale_({info.optimizer_var})  # clip the true gradients, not scaled ones",
            f"torch.nn.utils.clip_grad_norm_({info.var}.parameters(), max_norm=1.0)",
            f"scaler.step({info.optimizer_var})",
            "scaler.update()",
        ]
    else:
        lines = [
            "loss.backward()",
            f"torch.nn.utils.clip_grad_norm_({info.var}.parameters(), max_norm=1.0)",
            f"{info.optimizer_var}.step()",
        ]
    peak = finding.evidence.get("grad_norm_peak")
    return Suggestion(
        kind="clip_grad_norm",
        title="Clip the gradient norm between backward() and step()",
        why=(
            "Clipping rescales the whole gradient when its norm exceeds max_norm, so one bad "
            "batch cannot throw the weights far"
            + (f" (the gradient norm reached {fmt(peak)} here)" if peak else "")
            + "."
        ),
        code="\n".join(lines),
    )


#: The largest learning rate in common use for each optimizer (their defaults and the
#: usual ranges: SGD 0.01-0.1, the Adam family and RMSprop 1e-4-1e-3, Adagrad 0.01).
USUAL_MAX_LR = {
    "SGD": 0.1,
    "Adam": 1e-3,
    "AdamW": 1e-3,
    "NAdam": 1e-3,
    "RAdam": 1e-3,
    "Adamax": 2e-3,
    "RMSprop": 1e-3,
    "Adagrad": 0.01,
}


#: Optimizers whose step grows with the loss's scale (the adaptive ones divide it out).
SCALE_SENSITIVE = frozenset({"SGD"})


def lower_lr_factor(
    optimizer: str | None, lr: float | None, loss_multiplier: float | None = None
) -> float:
    """What ``lower_lr`` multiplies the learning rate by: 1/10, or down to the optimizer's
    :data:`USUAL_MAX_LR` when a tenth would still be above it (SGD at 18 goes to 0.1,
    not 1.8; AdamW at 3.0 to 1e-3).  Under SGD a loss multiplied by a constant multiplies
    every step by it too: the rate is judged as ``lr * loss_multiplier``."""
    usual = USUAL_MAX_LR.get(optimizer or "")
    if usual is None or lr is None or not lr > 0 or not math.isfinite(lr):
        return 0.1
    return min(0.1, usual / (lr * _multiplier(optimizer, loss_multiplier)))


#: A learning rate this many times the optimizer's usual largest one is far above it.
FAR_ABOVE_USUAL = 3.0


#: A rate this many times the usual largest one (a loss multiplier under SGD included)
#: outranks weights that started too large as the first suspect.
ABSURD_RATE = 100.0


def lr_times_usual(info: ModelInfo, loss_multiplier: float | None = None) -> float:
    """The run's learning rate over the optimizer's usual largest one
    (:data:`USUAL_MAX_LR`), NaN when either is unknown; under SGD a loss multiplied by a
    constant counts as a rate that many times larger (see :func:`lower_lr_factor`)."""
    usual = USUAL_MAX_LR.get(info.optimizer or "")
    if usual is None or info.lr is None:
        return math.nan
    return info.lr * _multiplier(info.optimizer, loss_multiplier) / usual


def lr_far_above_usual(info: ModelInfo, loss_multiplier: float | None = None) -> bool:
    """Whether the run's learning rate is :data:`FAR_ABOVE_USUAL` times the optimizer's
    usual largest one or more (see :func:`lr_times_usual`)."""
    return lr_times_usual(info, loss_multiplier) >= FAR_ABOVE_USUAL


def _multiplier(optimizer: str | None, loss_multiplier: float | None) -> float:
    """What a loss multiplier multiplies the step by: itself under SGD (above 1), else 1."""
    scaled = loss_multiplier is not None and math.isfinite(loss_multiplier)
    if optimizer in SCALE_SENSITIVE and scaled and loss_multiplier > 1:
        return float(loss_multiplier)
    return 1.0


#: A learning rate this many times below the optimizer's usual largest one is far below.
FAR_BELOW_USUAL = 100.0


def lr_far_below_usual(info: ModelInfo) -> bool | None:
    """Whether the run's learning rate is :data:`FAR_BELOW_USUAL` times below the
    optimizer's usual largest one (:data:`USUAL_MAX_LR`); None when either is unknown."""
    usual = USUAL_MAX_LR.get(info.optimizer or "")
    if usual is None or info.lr is None or not math.isfinite(info.lr):
        return None
    return info.lr * FAR_BELOW_USUAL <= usual


def _set_lr(info: ModelInfo, new_lr: str) -> list[str]:
    """The lines that set every param group's learning rate to ``new_lr``."""
    return [f"for group in {info.optimizer_var}.param_groups:", f'    group["lr"] = {new_lr}']


def lower_lr(finding: Finding, info: ModelInfo) -> Suggestion:
    """A ten times smaller learning rate, or the optimizer's usual largest one when a tenth
    would still be above it, counting a loss multiplier under SGD
    (:func:`lower_lr_factor`); ``settings`` carries the factor trial applies."""
    multiplier = finding.evidence.get("loss_multiplier")
    factor = lower_lr_factor(info.optimizer, info.lr, multiplier)
    new_lr = f"{info.lr * factor:.3g}" if info.lr else "1e-4"
    scaled = (
        info.optimizer in SCALE_SENSITIVE
        and isinstance(multiplier, float)
        and multiplier >= LOSS_MULTIPLIER_SHOWN
    )
    reason = ""
    if scaled:
        reason = (
            f" The logged loss is {fmt(multiplier)} times its loss function's value (a "
            f"multiplier in the loss), and {info.optimizer}'s step grows with it: the "
            f"effective rate is {fmt(info.lr * multiplier)}. Removing the multiplier from the "
            f"loss (and keeping lr={info.lr:g}) is the cleaner fix."
        )
    elif factor < 0.1:
        reason = (
            f" A tenth would still be above the {fmt(USUAL_MAX_LR[info.optimizer])} that "
            f"{info.optimizer} is usually run at."
        )
    lines = _set_lr(info, new_lr)
    if scaled:
        lines.append(f"# or: remove the x{fmt(multiplier)} from the loss and keep lr={info.lr:g}")
    return Suggestion(
        kind="lower_lr",
        title=f"Lower the learning rate to {new_lr}",
        why=(
            "The step size is the learning rate times the gradient; "
            + (f"at lr={info.lr:g} " if info.lr else "")
            + "updates are far beyond the ~1e-3 of the weights that healthy training takes."
            + reason
        ),
        code="\n".join(lines),
        settings={"lr_factor": factor},
    )


#: Weight decay alone shrinks every weight by about lr * weight_decay per step (exactly so
#: for AdamW's decoupled decay): from 1% per step the weights halve within 70 steps
#: whatever the gradient does, 1,000x what the usual settings take (AdamW 1e-3 x 0.01).
DECAY_PER_STEP = 1e-2
#: The weight decay each optimizer is usually run with: where ``lower_weight_decay`` goes.
TYPICAL_WEIGHT_DECAY = {"AdamW": 0.01, "SGD": 5e-4}


def _decay(info: ModelInfo) -> tuple[float, float, float]:
    """(lr * weight_decay, weight_decay, lr) of the param group that decays fastest."""
    best = (0.0, 0.0, 0.0)
    for group in (info.optimizer_settings or {}).get("param_groups") or []:
        lr, wd = group.get("lr"), group.get("weight_decay")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lr, wd))
        if numbers and lr > 0 and wd > 0 and lr * wd > best[0]:
            best = (lr * wd, wd, lr)
    return best


def decay_too_strong(info: ModelInfo) -> bool:
    """Whether the optimizer's weight decay shrinks the weights by :data:`DECAY_PER_STEP`
    or more on every step and is itself 10x past the usual one (a typo such as
    weight_decay=100 for 1e-2; AdamW's default 0.01 at a learning rate of 3 also shrinks
    them 3% per step, but there the rate is the cause)."""
    per_step, wd, _ = _decay(info)
    usual = TYPICAL_WEIGHT_DECAY.get(info.optimizer or "", 1e-4)
    return per_step >= DECAY_PER_STEP and wd >= 10 * usual


def lower_weight_decay(finding: Finding, info: ModelInfo) -> Suggestion:
    """The optimizer's usual weight decay (or 1/100 of this one when that is not lower);
    ``settings`` carries the factor trial applies."""
    per_step, wd, lr = _decay(info)
    target = TYPICAL_WEIGHT_DECAY.get(info.optimizer or "", 1e-4)
    if not target < wd:
        target = wd / 100
    if wd <= 0:  # printed for a finding alone (no optimizer known): the usual value
        wd = target = TYPICAL_WEIGHT_DECAY.get(info.optimizer or "", 1e-4)
    left = (1 - min(per_step, 1.0)) ** 100
    return Suggestion(
        kind="lower_weight_decay",
        title=f"Lower the weight decay to {target:g}",
        why=(
            f"First because weight decay {wd:g} at lr={lr or 0:g} shrinks every weight by "
            f"{per_step:.0%} on each step whatever the gradient does ({left:.2g} of its size "
            f"after 100 steps): the weights are pulled to 0 faster than the loss can train "
            f"them. {target:g} is usual for {info.optimizer or 'this optimizer'}."
        ),
        code="\n".join(
            [
                f"for group in {info.optimizer_var}.param_groups:",
                f"    group[\"weight_decay\"] = {target:g}",
            ]
        ),
        settings={"weight_decay_factor": target / wd},
    )


#: The update-to-weight ratio per step that healthy training takes (a rule of thumb:
#: updates around a thousandth of the weights).
HEALTHY_UPDATE_RATIO = 1e-3

#: The learning rate each optimizer is usually started at (PyTorch's defaults for the
#: adaptive ones; 0.01 for SGD, the classic default): where ``raise_lr`` goes.
TYPICAL_LR = {
    "SGD": 0.01,
    "Adam": 1e-3,
    "AdamW": 1e-3,
    "NAdam": 2e-3,
    "RAdam": 1e-3,
    "Adamax": 2e-3,
    "RMSprop": 1e-3,
    "Adagrad": 0.01,
}


def raise_lr_factor(optimizer: str | None, lr: float | None, update_ratio: float) -> float:
    """What ``raise_lr`` multiplies the learning rate by: up to the optimizer's typical
    starting rate (:data:`TYPICAL_LR`), at least 2x; for an optimizer without one, enough
    to bring the typical layer's update to :data:`HEALTHY_UPDATE_RATIO` of its weights,
    between 2x and 1000x, rounded down to 1, 2 or 5 times a power of ten."""
    typical = TYPICAL_LR.get(optimizer or "")
    if typical is not None and lr and lr > 0:
        return max(typical / lr, 2.0)
    wanted = HEALTHY_UPDATE_RATIO / update_ratio if update_ratio > 0 else 1000.0
    wanted = min(max(wanted, 2.0), 1000.0)
    power = 10.0 ** math.floor(math.log10(wanted))
    return max(step * power for step in (1.0, 2.0, 5.0) if step * power <= wanted * (1 + 1e-9))


def raise_lr(finding: Finding, info: ModelInfo) -> Suggestion:
    """A larger learning rate (:func:`raise_lr_factor`), or, under SGD with a loss scaled
    down, the loss without its multiplier; ``settings`` carries the factor trial applies."""
    ratio = float(finding.evidence.get("update_ratio") or 0.0)
    typical = float(finding.evidence.get("median_update_ratio") or ratio)
    factor = raise_lr_factor(info.optimizer, info.lr, typical)
    new_lr = f"{info.lr * factor:.3g}" if info.lr else "1e-3"
    multiplier = finding.evidence.get("loss_multiplier")
    scaled = (
        info.optimizer in SCALE_SENSITIVE
        and isinstance(multiplier, float)
        and 0 < multiplier <= 1 / LOSS_MULTIPLIER_SHOWN
    )
    reason = (
        f" The logged loss is {fmt(multiplier)} times its loss function's value, and "
        f"{info.optimizer}'s step shrinks with it: removing that multiplier from the loss "
        "is the cleaner fix."
        if scaled
        else ""
    )
    lines = _set_lr(info, new_lr)
    if scaled:
        lines.append(f"# or: remove the x{fmt(multiplier)} from the loss")
    return Suggestion(
        kind="raise_lr",
        title=f"Raise the learning rate to {new_lr}",
        why=(
            "Each step moves the weights by the learning rate times the gradient; "
            + (f"at lr={info.lr:g} " if info.lr else "")
            + f"the typical layer moves by {fmt(typical)} of its weights per step (the "
            f"most-moved one by {fmt(ratio)}), where healthy training takes about "
            f"{HEALTHY_UPDATE_RATIO:g}. "
            + (
                f"{info.optimizer} is usually started at {TYPICAL_LR[info.optimizer]:g}"
                if info.optimizer in TYPICAL_LR and factor * (info.lr or 0) > 0
                and math.isclose(factor * info.lr, TYPICAL_LR[info.optimizer])
                else f"x{factor:g} brings it near that"
            )
            + " (watch the loss: lower the rate again if it jumps)." + reason
        ),
        code="\n".join(lines),
        settings={"lr_factor": factor},
    )


def add_batchnorm(finding: Finding, info: ModelInfo) -> Suggestion:
    """BatchNorm after the weight layers (and after a frozen layer the finding names as
    feeding its units: its outputs can only be re-centred after it)."""
    layers = _weight_layers(info, finding.evidence.get("layers"))
    frozen = info.layer(finding.evidence.get("frozen_feeding_layer"))
    if frozen is not None and frozen not in layers:
        layers = [frozen, *layers]
    if info.root_type == "Sequential":
        code = "\n".join(
            [
                "import torch.nn as nn",
                "",
                "layers = []",
                f"for module in {info.var}:",
                "    layers.append(module)",
                f"    if isinstance(module, nn.Linear) and module is not {info.var}[-1]:",
                "        layers.append(nn.BatchNorm1d(module.out_features))",
                "    elif isinstance(module, nn.Conv2d):",
                "        layers.append(nn.BatchNorm2d(module.out_channels))",
                f"{info.var} = nn.Sequential(*layers)  # then rebuild the optimizer",
            ]
        )
    else:
        code = _wrap_with_batchnorm(info, _batchnorm_targets(info, layers))
    return Suggestion(
        kind="add_batchnorm",
        title="Add BatchNorm after the weight layers",
        why=(
            "BatchNorm re-centres and re-scales each layer's output, keeping activations in the "
            "range where the activation's slope (and so the gradient) is large."
        ),
        code=code,
    )


#: The BatchNorm that fits a layer's output, by the output's number of dimensions.
_BATCHNORM_BY_DIMS = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def _batchnorm_targets(info: ModelInfo, layers: list[LayerInfo]) -> list[tuple[str, str]]:
    """(layer, BatchNorm constructor) for the hidden linear/conv layers of ``layers`` whose
    output a BatchNorm fits (batch x features, or batch x channels x ...; a Linear's
    sequence output does not) and that no normalisation follows yet."""
    output = _output_layer(info)
    out = []
    for layer in layers:
        width = layer.size.get("out_features") or layer.size.get("out_channels")
        shape = layer.output_shape
        if layer.role != "weight" or layer is output or not width or shape is None:
            continue
        if followed_by_norm(info, layer.name) or ("out_features" in layer.size and len(shape) != 2):
            continue
        norm = _BATCHNORM_BY_DIMS.get(len(shape))
        if norm is not None:
            out.append((layer.name, f"nn.{norm}({width})"))
    return out


def _output_layer(info: ModelInfo) -> LayerInfo | None:
    """The model's last linear/conv layer in forward order: its output is the model's."""
    return next((layer for layer in reversed(info.layers) if layer.role == "weight"), None)


def _wrap_with_batchnorm(info: ModelInfo, targets: list[tuple[str, str]]) -> str:
    """Code that puts a BatchNorm right after each target layer of the model, in place (the
    layer becomes ``nn.Sequential(layer, BatchNorm)``), as ``trial`` applies it."""
    if not targets:
        return "\n".join(
            [
                "# BatchNorm fits none of the layers named here: their outputs are sequences",
                "# (batch, time, features) or recurrent, or a normalisation already follows",
                "# them. For a sequence, nn.LayerNorm(features) after the layer is the usual",
                "# choice; a recurrent layer's hidden state is normalised inside its cell.",
            ]
        )
    pairs = ",\n".join(f"    ({name!r}, {norm})" for name, norm in targets)
    return "\n".join(
        [
            "import torch.nn as nn",
            "",
            "# each layer becomes nn.Sequential(layer, BatchNorm): its output is normalised",
            f"for name, norm in [\n{pairs},\n]:",
            '    parent, _, child = name.rpartition(".")',
            f"    owner = {info.var}.get_submodule(parent) if parent else {info.var}",
            "    setattr(owner, child, nn.Sequential(getattr(owner, child), norm))",
            f"# then rebuild the optimizer over {info.var}.parameters()",
        ]
    )


def add_residual(finding: Finding, info: ModelInfo) -> Suggestion:
    """A skip connection so gradients bypass the deep stack."""
    return Suggestion(
        kind="add_residual",
        title="Add residual (skip) connections around blocks of layers",
        why=(
            "With x = x + block(x) the gradient reaches early layers through the identity path "
            "untouched, however deep the stack."
        ),
        code="\n".join(
            [
                "class Residual(nn.Module):",
                "    def __init__(self, block: nn.Module):",
                "        super().__init__()",
                "        self.block = block",
                "",
                "    def forward(self, x):",
                "        return x + self.block(x)",
            ]
        ),
    )


def use_nonsaturating_loss(finding: Finding, info: ModelInfo) -> Suggestion:
    """The non-saturating generator loss of a GAN (parts named in the finding's evidence)."""
    g = finding.evidence.get("part")
    d = finding.evidence.get("other_part") or "discriminator"
    generator = _ref(info, g) if g else info.var
    # A discriminator watched apart is another model of the user's loop, not a submodule.
    other = finding.evidence.get("other_model")
    discriminator = (other if _is_attr_path(other) else "discriminator") if other else _ref(info, d)
    ends_in_sigmoid = bool(info.layers) and not other and _ends_in_sigmoid(info, d)
    return Suggestion(
        kind="use_nonsaturating_loss",
        title="Train the generator with the non-saturating loss -log D(G(z))",
        why=(
            "log(1 - D(G(z))) is flat where D(G(z)) is near 0, exactly when the discriminator "
            "wins, so the generator's gradient vanishes; -log D(G(z)) has the same fixed point "
            "but a strong gradient there."
        ),
        code="\n".join(
            [
                "import torch",
                "import torch.nn.functional as F",
                "",
                "",
                f"def generator_loss(d_on_fake, logits={not ends_in_sigmoid}):",
                '    """-log D(G(z)): d_on_fake is the discriminator\'s output on generated',
                "    samples; logits=False when the discriminator ends in a Sigmoid.\"\"\"",
                "    real = torch.ones_like(d_on_fake)",
                "    if logits:",
                "        return F.binary_cross_entropy_with_logits(d_on_fake, real)",
                "    return F.binary_cross_entropy(d_on_fake, real)",
                "",
                "",
                "# in the generator's step, instead of g_loss = torch.log(1 - D(G(z))).mean():",
                f"# g_loss = generator_loss({discriminator}({generator}(z)))",
            ]
        ),
    )


def _ends_in_sigmoid(info: ModelInfo, part: str) -> bool:
    """Whether the last module of model part ``part`` (a top-level name) is a sigmoid."""
    inside = [layer for layer in info.layers if layer.name.split(".")[0] == part]
    return bool(inside) and inside[-1].role == "sigmoid"


def fix_loss_numerics(finding: Finding, info: ModelInfo) -> Suggestion:
    """Numerically safe versions of log/softmax/division, naming the culprit."""
    culprit = finding.evidence.get("culprit") or finding.layer or "loss"
    where = finding.evidence.get("where")
    after = finding.evidence.get("made_after")
    place = "the loss function" if where == "loss" else culprit
    layer = info.layer(culprit)
    located = (
        f"# in {_comment(layer.type)}.forward ({info.var} module {_comment(repr(culprit))}):"
        if layer is not None
        else "# in the loss function:"
    )
    if where == "inside" and after:
        # A functional operation in the container's own forward(), on its child's output.
        place = f"the operation in {culprit}'s forward() after {after}"
        located = f"# in {_comment(culprit)}'s forward(), on {_comment(after)}'s output:"
    if where == "between" and after:
        # A functional operation in the forward() that calls both modules, not in either.
        place = f"the operation between {after} and {culprit}"
        located = (
            f"# in the forward() that calls {_comment(after)} and then {_comment(culprit)} "
            f"({info.var}'s own forward when both are its children), on {_comment(after)}'s "
            "output:"
        )
    return Suggestion(
        kind="fix_loss_numerics",
        title=f"Make {place} numerically safe",
        why=(
            f"The first NaN/Inf comes from {place}"
            + (f" (its {where} pass)" if where in ("forward", "backward") else "")
            + ": log(0), sqrt(0)'s slope, division by ~0 and exp overflow give Inf/NaN; "
            "the fused or clamped forms below never do."
        ),
        code="\n".join(
            [
                "import torch",
                "",
                located,
                "#   torch.log(torch.softmax(x, -1))  ->  torch.log_softmax(x, dim=-1)",
                "#   torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)  ->  torch.softmax(x, -1)",
                "#   torch.log(p)                     ->  torch.log(p.clamp_min(1e-8))",
                "#   torch.sqrt(s)                    ->  torch.sqrt(s + 1e-8)",
                "#   a / b                            ->  a / (b + 1e-8)",
                "# and losses on probabilities -> the fused versions on raw logits:",
                "#   nn.functional.cross_entropy(logits, target)",
                "#   nn.functional.binary_cross_entropy_with_logits(logits, target)",
                "",
                "def safe_log(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:",
                "    return torch.log(x.clamp_min(eps))",
            ]
        ),
    )


def _freeze_lines(finding: Finding, info: ModelInfo) -> list[str]:
    """Code that freezes the parameters a ``no_gradient`` finding names."""
    names = ", ".join(repr(p) for p in finding.evidence.get("parameters") or [])
    return [
        f"for name, param in {info.var}.named_parameters():",
        f"    if name in [{names}]:",
        "        param.requires_grad_(False)",
    ]


def _training_step(info: ModelInfo) -> str:
    """One training step in the order that works: reset, forward, backward, step."""
    opt = info.optimizer_var
    return "\n".join(
        [
            f"{opt}.zero_grad()  # once per step, before backward()",
            f"loss = loss_fn({info.var}(x), y)",
            "loss.backward()",
            f"{opt}.step()",
        ]
    )


def reset_gradients(finding: Finding, info: ModelInfo) -> Suggestion:
    """Reset the gradients once per optimizer step."""
    return Suggestion(
        kind="reset_gradients",
        title=f"Call {info.optimizer_var}.zero_grad() once per step",
        why=(
            "backward() adds into .grad; without zero_grad() each step applies the sum of "
            "every gradient so far, which grows step by step (a larger learning rate in "
            "effect, in directions the model has moved past). With gradient accumulation, "
            "reset after each optimizer.step(), not after each micro-batch."
        ),
        code=_training_step(info),
    )


#: Per loss-input mistake (gradscope.loss_input's codes): title and the corrected call.
_LOSS_INPUT_FIXES = {
    1.0: (
        "Pass the raw scores to cross_entropy (drop the softmax before it)",
        [
            "logits = model(x)  # no softmax at the end of forward() for training",
            "loss = F.cross_entropy(logits, y)  # applies log_softmax itself",
            "probs = logits.softmax(dim=1)  # only where probabilities are wanted",
        ],
    ),
    2.0: (
        "Pass the raw scores to binary_cross_entropy_with_logits (drop the sigmoid)",
        [
            "logits = model(x)  # no sigmoid at the end of forward() for training",
            "loss = F.binary_cross_entropy_with_logits(logits, y)",
            "# or keep the sigmoid: loss = F.binary_cross_entropy(torch.sigmoid(logits), y)",
        ],
    ),
    3.0: (
        "Apply log_softmax before nll_loss (or use cross_entropy)",
        [
            "scores = model(x)  # the model's output, before any log_softmax",
            "loss = F.nll_loss(F.log_softmax(scores, dim=1), y)",
            "# the same, in one call: loss = F.cross_entropy(scores, y)",
        ],
    ),
    4.0: (
        "Give mse_loss a prediction and a target of the same shape",
        [
            "pred = model(x)",
            "loss = F.mse_loss(pred.squeeze(-1), y)  # (N, 1) -> (N,), as y",
            "# or: loss = F.mse_loss(pred, y.unsqueeze(-1))",
            "assert pred.squeeze(-1).shape == y.shape",
        ],
    ),
}


def fix_loss_input(finding: Finding, info: ModelInfo) -> Suggestion:
    """The loss call with the input it expects (a code change)."""
    title, lines = _LOSS_INPUT_FIXES.get(
        finding.evidence.get("mistake"), _LOSS_INPUT_FIXES[1.0]
    )
    return Suggestion(
        kind="fix_loss_input",
        title=title,
        why="The loss function applies its own squashing; applied twice, the model's "
        "outputs cannot reach the values the targets ask for.",
        code="\n".join(lines),
    )


def check_graph(finding: Finding, info: ModelInfo) -> Suggestion:
    """Find where the graph is cut, or freeze on purpose (or, when no parameter had a
    gradient at any step, put the loop in order)."""
    if finding.evidence.get("loop_order"):
        return Suggestion(
            kind="check_graph",
            title="Call loss.backward() before optimizer.step()",
            why=(
                "optimizer.step() uses the gradients backward() wrote since the last "
                "zero_grad(); here no parameter had one when step() ran, so no weight moved."
            ),
            code=_training_step(info),
        )
    params = finding.evidence.get("parameters") or []
    unread = bool(finding.evidence.get("module_reached")) and bool(params)
    return Suggestion(
        kind="check_graph",
        title=(
            f"Use {', '.join(params)} in {finding.layer}'s forward(), or freeze "
            f"{'it' if len(params) == 1 else 'them'}"
            if unread
            else f"Connect {finding.layer} to the loss, or freeze it"
        ),
        why=(
            "A parameter gets a gradient only if the loss depends on it through autograd; "
            + (
                "this module's output reaches the loss (its other parameters, or its "
                "submodules', get gradients), so these are never read in its forward() (or "
                "only through .detach()/.data)"
                if finding.evidence.get("module_reached")
                else "this module runs but its output is detached somewhere"
                if finding.evidence.get("module_called")
                else "this module is never called in forward()"
            )
            + "."
        ),
        code="\n".join(
            [
                "loss.backward()",
                f"missing = [n for n, p in {info.var}.named_parameters()",
                "           if p.requires_grad and p.grad is None]",
                "print(missing)  # look for .detach(), .data or torch.no_grad() on their path",
                "# or, if they are meant to stay fixed:",
                *_freeze_lines(finding, info),
            ]
        ),
    )


def freeze_unused(finding: Finding, info: ModelInfo) -> Suggestion:
    """Freeze (or delete) a module that forward() never calls."""
    return Suggestion(
        kind="freeze_unused",
        title=f"Freeze {finding.layer}, or delete it: forward() never calls it",
        why=(
            "A module that never runs cannot learn; its parameters only take memory and "
            "optimizer state. If it should run, call it in forward() instead "
            "(see the next suggestion)."
        ),
        code="\n".join(
            [
                *_freeze_lines(finding, info),
                "# or delete the module from the model (and any use of it)",
            ]
        ),
    )


def never_called(finding: Finding, info: ModelInfo) -> bool:
    """Whether the finding's module was never called (``no_gradient`` evidence)."""
    return finding.evidence.get("module_called") is False


def check_inputs(finding: Finding, info: ModelInfo) -> Suggestion:
    """Find and drop (or repair) the samples whose inputs hold NaN/Inf."""
    return Suggestion(
        kind="check_inputs",
        title="Check the data: a batch reached the model with NaN/Inf in it",
        why=(
            "Every module's output was finite until the input itself was not, so no change "
            "to the model can fix it; one bad sample poisons the whole batch's gradient."
        ),
        code="\n".join(
            [
                "import torch",
                "",
                "bad = ~torch.isfinite(x).flatten(1).all(dim=1)  # samples with NaN/Inf",
                "if bad.any():",
                "    print(f\"{int(bad.sum())} bad samples in this batch\")",
                "    x, y = x[~bad], y[~bad]  # or fix them at the source",
            ]
        ),
    )


def check_targets(finding: Finding, info: ModelInfo) -> Suggestion:
    """Find the samples whose targets hold NaN/Inf (the loss is infinite from finite
    predictions)."""
    return Suggestion(
        kind="check_targets",
        title="Check the targets: NaN/Inf in y makes the loss infinite",
        why=(
            "Every module's output was finite but the loss was not: either the loss "
            "function's own arithmetic (the next fix) or a target that is NaN/Inf, which no "
            "change to the model can fix."
        ),
        code="\n".join(
            [
                "import torch",
                "",
                "bad = ~torch.isfinite(y.reshape(len(y), -1)).all(dim=1)  # samples with NaN/Inf",
                "if bad.any():",
                "    print(f\"{int(bad.sum())} bad targets in this batch\")",
                "    x, y = x[~bad], y[~bad]  # or fix them at the source",
            ]
        ),
    )


def random_init(finding: Finding, info: ModelInfo) -> Suggestion:
    """Random init for every layer whose rows are identical."""
    nonlinearity = info.activation_after(finding.layer or "") or "relu"
    call = (
        'nn.init.kaiming_normal_(weight, nonlinearity="relu")'
        if nonlinearity == "relu"
        else f"nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain({nonlinearity!r}))"
    )
    code = "\n".join(
        [
            "import torch",
            "import torch.nn as nn",
            "",
            "# every weight matrix whose rows (output units) are copies of each other: the",
            "# finding's layer and any other, recurrent and attention weights too (one run of",
            "# this fixes them all); the matching bias goes to zero",
            f"for module in {info.var}.modules():",
            "    for name, weight in module.named_parameters(recurse=False):",
            "        rows = weight.detach().flatten(1) if weight.dim() >= 2 else None",
            "        if rows is not None and torch.allclose(rows, rows[:1].expand_as(rows)):",
            "            with torch.no_grad():",
            "                if isinstance(module, nn.RNNBase):  # a recurrence: unit gain",
            "                    nn.init.xavier_uniform_(weight)",
            "                else:",
            f"                    {call}",
            '                bias = getattr(module, name.replace("weight", "bias"), None)',
            "                if isinstance(bias, torch.Tensor):",
            "                    nn.init.zeros_(bias)",
        ]
    )
    return Suggestion(
        kind="random_init",
        title=f"Initialise {finding.layer} (and any layer like it) randomly",
        why=(
            "Random weights make every unit compute something different, so the units get "
            "different gradients and learn different features (zero or constant weights never do)."
        ),
        code=code,
    )


Builder = Callable[[Finding, ModelInfo], Suggestion]


Plan = Callable[[Finding, ModelInfo], list[Builder]]


def batchnorm_fits(finding: Finding, info: ModelInfo) -> bool:
    """Whether a hidden weight layer the finding names (else any) has an output BatchNorm
    can follow: (batch, features) after a linear map, (batch, channels, h, w) after a
    convolution.  Sequence outputs (batch, time, features) and recurrent layers do not fit.
    Unknown shapes count as fitting (nothing was measured to say otherwise); no hidden
    trainable linear/conv layer at all (an LSTM between a frozen embedding and the output
    layer) does not."""
    output = _output_layer(info)
    chosen = _weight_layers(info, finding.evidence.get("layers"))
    if info.root_type != "Sequential":  # the printed loop wraps these layers in place
        return bool(_batchnorm_targets(info, chosen))
    hidden = [
        layer
        for layer in chosen
        if layer.role == "weight" and layer is not output
        and not followed_by_norm(info, layer.name)  # a norm already follows it
    ]  # fmt: skip
    shapes = [layer.output_shape for layer in hidden]
    if not shapes:
        return False
    if all(shape is None for shape in shapes):
        return True
    return any(shape is not None and len(shape) in (2, 4) for shape in shapes)


#: Fixes that cannot apply to some models, with the test of whether they apply.
_APPLIES: dict[Builder, Callable[[Finding, ModelInfo], bool]] = {}


def suggest(finding: Finding, info: ModelInfo, kind: str, plan: Plan) -> list[Suggestion]:
    """The suggestions of ``plan`` for a finding of ``kind`` (none for other kinds); a fix
    that cannot apply to this model (BatchNorm after sequence outputs) moves to the end,
    where its code still shows what it would take."""
    if finding.kind != kind:
        return []
    builders = plan(finding, info)
    if decay_too_strong(info) and kind in DECAY_HURTS:
        # A setting 100x past the usual one is the cause whatever the finding's plan says.
        builders = [lower_weight_decay] + [b for b in builders if b is not lower_weight_decay]
    fitting = [b for b in builders if _APPLIES.get(b, _always)(finding, info)]
    return [build(finding, info) for build in fitting + [b for b in builders if b not in fitting]]


#: Finding kinds a weight decay that shrinks the weights every step can cause: gradients
#: and activations that fade with the weights (not NaN, unused or copied parameters).
DECAY_HURTS = frozenset(
    {"vanishing_gradient", "dead_relu", "saturated_activation", "exploding_gradient"}
)


def _always(finding: Finding, info: ModelInfo) -> bool:
    return True


def looped(finding: Finding) -> list[str]:
    """The finding's layers that run once per time step (a recurrence written as a Python
    loop: evidence ``looped_layers``), where ReLU is unbounded."""
    return list(finding.evidence.get("looped_layers") or [])


def loop_reason(layers: list[str]) -> str:
    """Why ReLU is not first for a recurrence written as a loop (``layers`` its cell's)."""
    return (
        f"First because {', '.join(layers[:3])} run once per time step (a recurrence "
        "written as a loop): ReLU, the usual fix for sigmoid/tanh, is unbounded there and "
        "would grow the hidden state at every step. "
    )


def explain_first(suggestions: list[Suggestion], kind: str, reason: str) -> list[Suggestion]:
    """``suggestions`` with ``reason`` (the evidence that ranked it) before the first one's
    ``why`` when the first is of ``kind``."""
    if suggestions and reason and suggestions[0].kind == kind:
        suggestions[0] = replace(suggestions[0], why=reason + suggestions[0].why)
    return suggestions

_APPLIES[add_batchnorm] = batchnorm_fits
_APPLIES[reset_norm_gains] = has_tiny_norm_gains
_APPLIES[freeze_unused] = never_called

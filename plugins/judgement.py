"""Judgement helpers shared by the built-in detectors (not a plugin itself).

Measurements live in the core (:mod:`gradscope.signals`); the choices detectors share
live here, once: which layers carry depth, which part of a model a layer belongs to,
the first step where a condition holds, the layer before another, how numbers read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from gradscope.config import thresholds
from gradscope.functional_acts import ACTIVATIONS
from gradscope.history import History
from gradscope.modelinfo import LayerInfo, ModelInfo
from gradscope.signals import (
    DEFAULT_WINDOW,
    LayerSignal,
    LossTrend,
    data_rms,
    default_init_norm,
    first_output_rms,
    layer_signals,
    step_weighted_median,
    trend_of,
)
from gradscope.signals import norm_gains as raw_norm_gains

#: Roles whose gradients carry the signal along the network's depth.
DEPTH_ROLES = ("weight", "vanilla_rnn", "gated_rnn", "attention")
#: Names of attention query/key projections (PyTorch, Hugging Face and common conventions).
#: Their gradients pass through a softmax of dot products and are tiny at initialisation by
#: design, so comparing them with the other layers would cry wolf on every transformer.
QUERY_KEY_NAMES = frozenset(
    {"query", "key", "q_proj", "k_proj", "q", "k", "to_q", "to_k", "wq", "wk", "q_lin", "k_lin"}
)


def blocked_paths_possible(model_info: ModelInfo) -> bool:
    """Whether an exactly-zero gradient can be a blocked path (silent ReLUs) rather than
    a gradient that shrank until it underflowed."""
    return "relu" in model_info.roles()


def depth_layers(history: History, model_info: ModelInfo) -> list[LayerSignal]:
    """Layer signals of the layers that carry depth (linear maps, recurrent, attention).

    Norm layers, embeddings, attention query/key projections, bias-only modules and
    layers whose forward hook never fired (so their depth is unknown) are left out: their
    gradients are small or sparse by design and would make healthy models look vanishing.
    So are layers whose weights are all zero: gradient sizes relative to zero weights mean
    nothing (``symmetric_weights`` reports them), and channel gates
    (:meth:`ModelInfo.gate_layers`, squeeze-excitation), small by design as query/key
    projections are.
    """
    roles = {layer.name: layer.role for layer in model_info.layers}
    gates = model_info.gate_layers()
    calls = zip(history.module_names, history.calls_total, strict=True)
    called = {name for name, count in calls if count}
    return [
        s
        for s in layer_signals(history)
        if roles.get(s.name) in DEPTH_ROLES
        and s.name not in gates
        # A layer whose hook never fired (attention's out_proj) has no place in forward order.
        and (s.name in called or not called)
        and s.name.rsplit(".", 1)[-1].lower() not in QUERY_KEY_NAMES
        and bool((s.param_norm[-DEFAULT_WINDOW:] != 0).any())
    ]


#: A layer called this many times as often per step as the least-called one runs in a
#: loop over time steps (a GAN's discriminator, called on real and generated samples and
#: again for the generator's loss, runs up to three times as often as the generator).
LOOP_CALLS = 4


def looped_layers(history: History, names: list[str]) -> list[str]:
    """The layers of ``names`` called at least :data:`LOOP_CALLS` times as often per step as
    the least-called of them: a recurrence written as a Python loop (a cell called once per
    time step)."""
    calls = dict(zip(history.module_names, history.calls_total, strict=True))
    counts = [calls.get(name, 0) for name in names]
    least = min((c for c in counts if c > 0), default=0)
    return [n for n, c in zip(names, counts, strict=True) if least and c >= LOOP_CALLS * least]


def part_of(model_info: ModelInfo, layer: str | None) -> str | None:
    """The part of the model ``layer`` belongs to when several optimizers (or the user's
    ``parts=``) split it, e.g. ``"generator"``; None for a model trained as one."""
    if not layer:
        return None
    return model_info.parts.get(layer)


def parts(model_info: ModelInfo) -> set[str]:
    """The distinct parts of the model (empty for a model trained as one)."""
    return set(model_info.parts.values())


def first_step_where(
    history: History, holds: Callable[[int], bool], default: str = "first"
) -> int:
    """The first recorded step ``k`` (index into the kept records) where ``holds(k)``.

    When it never holds, the run's first step (``default="first"``) or last step
    (``"last"``) is returned, so every finding has a step to point at.
    """
    for k, step in enumerate(history.steps):
        if holds(k):
            return step
    return history.steps[0] if default == "first" else history.steps[-1]


def over(series: torch.Tensor, threshold: float) -> Callable[[int], bool]:
    """``holds`` for :func:`first_step_where`: the value at k is above ``threshold``
    (a non-finite value counts as above)."""

    def holds(k: int) -> bool:
        value = float(series[k])
        return (not math.isnan(value) and not math.isfinite(value)) or value > threshold

    return holds


def under(series: torch.Tensor, threshold: float) -> Callable[[int], bool]:
    """``holds`` for :func:`first_step_where`: the value at k is finite and below."""

    def holds(k: int) -> bool:
        value = float(series[k])
        return math.isfinite(value) and value < threshold

    return holds


def layer_before(
    model_info: ModelInfo, name: str, roles: Iterable[str] = ("weight",)
) -> LayerInfo | None:
    """The nearest layer before ``name`` in forward order whose role is one of ``roles``."""
    names = [layer.name for layer in model_info.layers]
    if name not in names:
        return None
    wanted = set(roles)
    for layer in reversed(model_info.layers[: names.index(name)]):
        if layer.role in wanted:
            return layer
    return None


def fmt(value: float | None) -> str:
    """A short human form of a number for messages (3 significant digits)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3g}"


def times(factor: float) -> str:
    """A growth factor for messages: "12.3x", or "beyond float32's range" for one whose
    float32 value overflowed to Inf."""
    return f"{fmt(factor)}x" if math.isfinite(factor) else "beyond float32's range"


def linked_gan_role(model_info: ModelInfo) -> str | None:
    """``"generator"`` or ``"discriminator"`` for a model watched apart from its rival:
    its output fed another watched model that ran at least twice per step (real and
    generated samples), or its loss was an unwatched trainable network's verdict on it
    (:func:`gradscope.linkage.judged_by_another_network`); or it was fed by one and
    itself ran at least twice per step."""
    linked = model_info.extra.get("linked") or {}
    if linked.get("feeds_another") and linked.get("consumer_calls_per_step", 0) >= 2:
        return "generator"
    if linked.get("judged_by_another") and not linked.get("fed_by_another"):
        return "generator"
    if linked.get("fed_by_another") and linked.get("calls_per_step", 0) >= 2:
        return "discriminator"
    return None


def gan_roles(history: History, model_info: ModelInfo) -> dict[str, str]:
    """Layer name -> ``"generator"`` or ``"discriminator"`` when the model is a GAN.

    Read from structure, never from names: either the two players are watched apart and
    one's output is the other's input, or the model is trained in exactly two parts
    (optimizer parameter groups or ``watch(parts=...)``); the upstream part is the
    generator, and the downstream one is called at least twice per step (the
    discriminator sees real and generated samples) or the two are trained in turns
    (:func:`trained_in_turns`).
    """
    role = linked_gan_role(model_info)
    if role is not None:
        # Watched apart: this model feeds (or is fed by) the other player (gradscope.linkage).
        return {layer.name: role for layer in model_info.layers}
    split = model_info.parts
    if len(set(split.values())) != 2:
        return {}
    order = {layer.name: k for k, layer in enumerate(model_info.layers)}
    first_seen: dict[str, int] = {}
    for layer, part in split.items():
        first_seen[part] = min(first_seen.get(part, len(order)), order.get(layer, len(order)))
    upstream, downstream = sorted(first_seen, key=first_seen.get)
    calls = dict(zip(history.module_names, history.calls_total, strict=True))
    per_part = {
        part: max((calls.get(layer, 0) for layer, p in split.items() if p == part), default=0)
        for part in (upstream, downstream)
    }
    if per_part[downstream] < 2 * max(per_part[upstream], 1) and not trained_in_turns(
        history, split
    ):
        return {}
    return {
        layer: "generator" if part == upstream else "discriminator"
        for layer, part in split.items()
    }


def turn_trend(
    history: History, model_info: ModelInfo, roles: dict[str, str], role: str, window: int
) -> LossTrend | None:
    """The loss trend of ``role``'s own steps when a GAN in one model is trained in turns
    (:func:`trained_in_turns`): the losses logged on the steps where only that player got
    gradients.  None otherwise (both players step together: the logged loss is the
    generator's)."""
    split = model_info.parts
    if not roles or not trained_in_turns(history, split):
        return None
    mine = [roles.get(module) == role for module in history.param_modules]
    theirs = [roles.get(module) not in (None, role) for module in history.param_modules]
    present = history.grad_series("has_grad") > 0
    alone = present[:, mine].any(dim=1) & ~present[:, theirs].any(dim=1)
    losses = history.losses().clone()
    losses[~alone] = math.nan
    return trend_of(losses, window)


def trained_in_turns(history: History, split: dict[str, str], least: int = 2) -> bool:
    """Whether the model's two parts (``split``: module -> part) are trained in turns: on
    at least ``least`` recorded steps only one part got gradients, and on as many only the
    other (a GAN in one model, its discriminator's steps taking the generator's output
    detached and its generator's steps clearing the discriminator's gradients).  A model
    whose parts differ only in their learning rates gets gradients in both at every step."""
    part_of = [split.get(module) for module in history.param_modules]
    parts = sorted({part for part in part_of if part is not None})
    if len(parts) != 2 or len(history) == 0:
        return False
    present = history.grad_series("has_grad") > 0
    got = [
        present[:, [k for k, part in enumerate(part_of) if part == name]].any(dim=1)
        for name in parts
    ]
    alone = [int((got[0] & ~got[1]).sum()), int((got[1] & ~got[0]).sum())]
    return min(alone) >= least


def reference_norm(signal: LayerSignal, model_info: ModelInfo) -> float:
    """The norm a PyTorch-default-initialised copy of the layer's weight matrices has
    (:func:`gradscope.signals.default_init_norm`): the size a "small" weight is measured
    against, so a zero-initialised layer does not get an infinite relative gradient."""
    return default_init_norm(signal, model_info)


def followed_by_norm(model_info: ModelInfo, name: str) -> bool:
    """Whether the next layer with parameters after ``name`` is a normalisation: the
    layer's output scale is then irrelevant (BatchNorm/LayerNorm undo it)."""
    names = [layer.name for layer in model_info.layers]
    if name not in names:
        return False
    for layer in model_info.layers[names.index(name) + 1 :]:
        if layer.params or layer.frozen:
            return layer.role == "norm"
    return False


def relative_grad(
    signal: LayerSignal, model_info: ModelInfo, scale_invariant: bool = True
) -> torch.Tensor:
    """||grad|| / ||weight|| of the layer's weight matrices per record, judged fairly
    across layers and over time (as the definitions measure it: biases left out).

    Weights are measured against at least their default-initialisation size.  A layer
    followed by a normalisation is scale-invariant: its gradient shrinks as its weights
    grow (``g ~ 1/|W|``) without any loss of learning, so its ratio is taken as if the
    weights had kept their initial size (``|g| |W| / |W_0|^2``), unless
    ``scale_invariant`` is False (the plain ratio, as the definitions measure it).
    """
    ref = reference_norm(signal, model_info)
    norm = signal.matrix_norm.clamp_min(max(ref, 1e-12))
    rel = signal.matrix_grad_norm / norm
    if scale_invariant and followed_by_norm(model_info, signal.name):
        finite = signal.matrix_norm[torch.isfinite(signal.matrix_norm)]
        start = max(float(finite[0]) if finite.numel() else ref, ref)
        if start > 0:  # no weight matrix measured at the start: nothing to rescale by
            rel = rel * (norm / start) ** 2
    return rel


def update_ratio(signal: LayerSignal, model_info: ModelInfo) -> torch.Tensor:
    """||update|| / ||weight|| of the layer's weight matrices per record (NaN where the
    update was not measured), as the definitions measure it: a bias set far from zero
    would hide a matrix's step behind its own size, and weights are measured against at
    least their default-initialisation size."""
    size = signal.matrix_norm.clamp_min(max(reference_norm(signal, model_info), 1e-12))
    return signal.matrix_update_norm / size


def through_time_ratios(history: History) -> dict[str, float]:
    """Module -> step-weighted median over measured steps of (gradient reaching its first
    time step) / (gradient reaching its last), for recurrences that were measured."""
    first = history.act_series("time_grad_first")
    last = history.act_series("time_grad_last")
    ratios = first / last
    out = {}
    for j, name in enumerate(history.module_names):
        # An infinite first-step gradient is the far end of an explosion: it counts.
        measured = (last[:, j] > 0) & ~torch.isnan(first[:, j]) & torch.isfinite(last[:, j])
        if bool(measured.any()):
            steps = [s for s, m in zip(history.steps, measured.tolist(), strict=True) if m]
            out[name] = _weighted_median_with_inf(ratios[measured, j], steps)
    return out


def _weighted_median_with_inf(values: torch.Tensor, steps: list[int]) -> float:
    """The step-weighted median of ratios that may be infinite (an explosion's far end
    counts as larger than any finite ratio)."""
    capped = values.clamp(max=torch.finfo(values.dtype).max)
    median = step_weighted_median(capped, steps)
    return math.inf if median >= torch.finfo(values.dtype).max else median


def harm_severity(fraction: float, t: dict, stalled: bool) -> str:
    """Severity of a share of broken units: an error from ``t["error_fraction"]`` whatever
    the loss does, a warning from ``t["warn_fraction"]`` when the loss has stalled, and
    ``info`` when training goes on regardless (no harm seen)."""
    if fraction >= t["error_fraction"]:
        return "error"
    return "warning" if stalled else "info"


#: The thresholds of the harm test (:func:`learned_nothing`), shared by the detectors that
#: set severity by harm; each detector holds its own copy, overridable on its own.
HARM_DEFAULTS = {
    # Loss improving by less than this fraction over the run counts as stalled...
    "stall": 0.1,
    # ...and so does one improving by less than this over the second half (a plateau),
    # unless it improved by ``learned`` over the run: that plateau is convergence (a VAE's
    # ELBO 11.2 -> 4.9, flat over its second half, in a stranger session)...
    "plateau": 0.05,
    "learned": 0.5,
    # ...and a model whose output varies between samples by less than this share of its
    # size (it predicts a constant, whatever its loss did).
    "constant_output": 0.05,
    # ...or a loss that ends above this fraction of what the best constant prediction would
    # score on every batch trained on (measured when the loss is logged before backward();
    # the definitions' line).
    "constant_loss": 0.9,
}

#: A GAN player's own loss above this: its rival is all but certain about every sample
#: (a discriminator that scores every sample alike has 2 ln 2 = 1.39 with binary
#: cross-entropy; a player at 4 puts ~2% on the right side).  Each detector that asks holds
#: its own copy of the line, overridable on its own.
RIVAL_CERTAIN_LOSS = 4.0

#: Fewer logged losses than this say nothing about whether training stalled.
MIN_LOSSES_FOR_A_STALL = 20


def total_grad_norm(layers: list[LayerSignal]) -> torch.Tensor:
    """Per record: the norm of all the layers' gradients together (NaN entries as 0; NaN
    on a record where none of them got a gradient: a GAN player on its rival's steps)."""
    raw = torch.stack([s.grad_norm for s in layers], dim=1)
    total = torch.nan_to_num(raw, nan=0.0).square().sum(dim=1).sqrt()
    return total.masked_fill(torch.isnan(raw).all(dim=1), math.nan)


#: A loop clips when at least this share of the recorded steps (5 or more) have a total
#: gradient norm equal to their largest one, to this relative tolerance.
CLIPPED_SHARE, CLIPPED_TOLERANCE = 0.5, 1e-4


def clipped_at(history: History) -> float | None:
    """The ``max_norm`` the loop clips the gradient to (``clip_grad_norm_``), read off the
    recorded total norms (every parameter's, as the optimizer sees them), or None."""
    if history.recorded < 5 or not history.param_names:
        return None
    l2 = history.grad_series("grad_l2")
    total = torch.nan_to_num(l2, nan=0.0).square().sum(dim=1).sqrt()
    total = total[torch.isfinite(total) & (total > 0)]
    if total.numel() < 5:
        return None
    top = float(total.max())
    at_top = (total >= top * (1 - CLIPPED_TOLERANCE)).float().mean()
    return top if float(at_top) >= CLIPPED_SHARE else None


def growth_from_start(layers: list[LayerSignal], records: int | None = None) -> torch.Tensor | None:
    """The finite total gradient norms as multiples of their size at the start (the median
    of the first three), over the first ``records`` records (all when None), or None when
    fewer than two are finite or the start is 0."""
    if not layers:
        return None
    total = total_grad_norm(layers)[:records]
    finite = total[torch.isfinite(total)]
    if finite.numel() < 2:
        return None
    start = float(finite[: min(3, finite.numel())].median())
    return finite / start if start > 0 else None


def first_nonfinite_step(history: History) -> int | None:
    """The first training step whose loss or some gradient was NaN/Inf, or None."""
    history.losses()  # resolves losses logged after their step
    steps = [history.first_nonfinite_loss, *history.first_nonfinite_grad]
    found = [s for s in steps if s is not None]
    return min(found) if found else None


def growth_before_nonfinite(history: History, layers: list[LayerSignal]) -> torch.Tensor | None:
    """:func:`growth_from_start` over the records before the first NaN/Inf step only (a
    run non-finite from its first step has no "before": None)."""
    bad = first_nonfinite_step(history)
    if bad is None:
        return growth_from_start(layers)
    return growth_from_start(layers, sum(1 for step in history.steps if step < bad))


def loss_rise_before_nonfinite(history: History) -> float | None:
    """The largest finite loss logged up to the first NaN/Inf step (its forward ran on the
    weights the steps before made) over the first logged loss; None when the run stayed
    finite, or the first loss is not a positive finite number.  A loss at 1e23 one step
    before the gradients overflow says the values grew out of range (the learning rate),
    not that a formula divided by zero."""
    bad = first_nonfinite_step(history)
    if bad is None:
        return None
    losses = history.losses()[: sum(1 for step in history.steps if step <= bad)]
    finite = losses[torch.isfinite(losses)]
    if finite.numel() < 2 or not float(losses[0]) > 0:
        return None
    return float(finite[1:].max()) / float(losses[0])


def data_evidence(history: History, model_info: ModelInfo) -> dict[str, Any]:
    """The data's size as the first layer sees it, as finding evidence (``data_layer``,
    ``data_rms``: what ranks ``normalize_inputs``).  Not for a discriminator watched alone:
    its inputs include the generator's output, which is no data to standardise."""
    data = None if linked_gan_role(model_info) == "discriminator" else data_rms(history, model_info)
    return {"data_layer": data[0] if data else None, "data_rms": data[1] if data else math.nan}


def output_share(history: History, window: int) -> float:
    """How much the model's output varies between the samples of a batch (the median of
    the last ``window`` measurements of ``output_spread``), NaN when never measured.  Near 0
    the model predicts the same thing for every input: it learned its output bias at most,
    whatever its loss did on the way there."""
    series = _model_series(history, "output_spread")
    if series is None:
        return math.nan
    measured = series[~torch.isnan(series)]
    return float(measured[-window:].median())


def loss_multiplier(history: History) -> float | None:
    """How many times its loss function's own value the logged loss is: a constant the
    loop multiplies the loss by (``1e6 * cross_entropy(...)``), as the median over the
    records that measured both (detail steps with the loss logged before ``backward()``);
    None when none did."""
    term = _model_series(history, "loss_term")
    if term is None:
        return None
    losses = history.losses()
    ok = (term > 0) & torch.isfinite(losses) & torch.isfinite(term)
    return float((losses[ok] / term[ok]).median()) if bool(ok.any()) else None


def loss_vs_constant(history: History, trend: LossTrend) -> float:
    """The loss at the end of the run (``trend.last``) over what the best constant
    prediction scores on the same targets, NaN when that was never measured (a loss logged
    after ``backward()``, or one gradscope does not recognise).  The constant's loss is
    the last measured one (the constant's loss on every batch pooled so far: the
    largest pool; an earlier one, of fewer batches, fits them better), brought to the logged loss's
    scale (a loss multiplied by a factor is compared in its own units).  Near or above 1
    the model learned nothing an input-independent output would not."""
    term = _model_series(history, "loss_term")
    constant = _model_series(history, "constant_loss")
    scale = loss_multiplier(history)
    if term is None or constant is None or scale is None or not trend.known:
        return math.nan
    ok = (term > 0) & (constant > 0) & torch.isfinite(history.losses()) & torch.isfinite(term)
    if not bool(ok.any()):
        return math.nan
    rows = torch.nonzero(ok).flatten()
    baseline = float(constant[rows[-1]]) * scale  # the largest pool: every batch so far
    return trend.last / baseline if baseline > 0 else math.nan


def _model_series(history: History, column: str) -> torch.Tensor | None:
    """Per record: a statistic kept on one module's row (the output module), NaN where it
    was not measured; None when it never was."""
    series = history.act_series(column)
    if series.numel() == 0 or bool(torch.isnan(series).all()):
        return None
    return torch.nan_to_num(series, nan=-math.inf).amax(dim=1).double().nan_to_num(
        neginf=math.nan
    )


def no_better_than_constant(history: History, trend: LossTrend, t: dict) -> bool:
    """Whether the loss ends above ``t["constant_loss"]`` of a constant prediction's, judged
    once :data:`MIN_LOSSES_FOR_A_STALL` losses were logged (a few steps say nothing)."""
    if trend.logged < MIN_LOSSES_FOR_A_STALL:
        return False
    return loss_vs_constant(history, trend) >= t["constant_loss"]  # NaN (unmeasured): False


def stall_text(history: History, trend: LossTrend, t: dict) -> str:
    """The sentence that shows the harm in the loss: no better than a constant prediction
    when that was measured so, else a stalled loss."""
    moved = f"({fmt(trend.first)} -> {fmt(trend.last)})"
    if no_better_than_constant(history, trend, t):
        baseline = trend.last / loss_vs_constant(history, trend)
        return (
            f" The loss {moved} is no better than what predicting the same output for "
            f"every input scores on these targets ({fmt(baseline)}): the model learned the "
            "targets' average, not the task."
        )
    return f" The loss has stalled {moved}."


def predicts_a_constant(history: History, trend: LossTrend, t: dict) -> tuple[bool, float]:
    """(whether, share): the model predicts nearly the same output for every input (less
    than ``t["constant_output"]`` of its output varies between samples) and its loss is no
    longer falling (by less than ``t["stall"]`` over the second half of the run).  A loss
    measured to beat a constant prediction's (:func:`loss_vs_constant`), or one that fell
    to zero (:func:`fitted`), overrules the share: what little varies carries the task."""
    share = output_share(history, int(t.get("window", DEFAULT_WINDOW)))
    if fitted(trend):
        return False, share  # whatever the output does, it scores a perfect loss
    still_learning = trend.known and trend.late_improvement >= t["stall"]
    if trend.logged >= MIN_LOSSES_FOR_A_STALL and loss_vs_constant(history, trend) < t[
        "constant_loss"
    ]:
        still_learning = True
    return share < t["constant_output"] and not still_learning, share


def fitted(trend: LossTrend) -> bool:
    """Whether the loss fell to (almost exactly) zero from where training started (the
    first loss, or the early median if lower: a blow-up must not make a plateau look like
    zero): the task is solved, and a gradient that vanished with it is convergence (a
    triplet margin met by every sample)."""
    start = abs(trend.first)
    if math.isfinite(trend.initial):
        start = min(start, abs(trend.initial))
    return trend.known and 0 <= trend.last <= 1e-6 * start


def learned_nothing(history: History, trend: LossTrend, t: dict) -> bool:
    """The harm a broken part of a model shows: the loss stalled or plateaued (``t``'s
    ``stall`` and ``plateau``), or the model predicts the same output for every input
    (less than ``t["constant_output"]`` of it varies between samples).  Without a logged
    loss the harm cannot be seen and counts as shown (the size of the fault decides)."""
    if not trend.known:
        return True
    return predicts_a_constant(history, trend, t)[0] or loss_shows_harm(history, trend, t)


def loss_shows_harm(history: History, trend: LossTrend, t: dict) -> bool:
    """Whether the loss shows that the model learned nothing: where a constant prediction's
    loss was measured, the definitions' test (the loss improved by less than ``stall``, or
    ends above ``constant_loss`` of the constant's); elsewhere a stall or a plateau
    (:func:`stalled`), the plateau standing in for the unmeasured constant.  Judged once
    :data:`MIN_LOSSES_FOR_A_STALL` losses were logged."""
    if not trend.known or trend.logged < MIN_LOSSES_FOR_A_STALL or fitted(trend):
        return False
    ratio = loss_vs_constant(history, trend)
    if math.isfinite(ratio):
        return trend.improvement < t["stall"] or ratio >= t["constant_loss"]
    return stalled(trend, t["stall"], t["plateau"], t.get("learned", math.inf))


def stalled(
    trend: LossTrend, stall: float, plateau: float, learned: float = math.inf
) -> bool:
    """Whether training is not learning: the loss improved by less than ``stall`` over the
    run, or by less than ``plateau`` over its second half when it improved by less than
    ``learned`` over the run (a loss that halved and then rests has converged; a loss
    resting at zero is solved).  Unknown (fewer than
    :data:`MIN_LOSSES_FOR_A_STALL` losses logged) counts as not stalled."""
    if not trend.known or trend.logged < MIN_LOSSES_FOR_A_STALL or fitted(trend):
        return False
    rested = trend.late_improvement < plateau and trend.improvement < learned
    return trend.improvement < stall or rested


def through_time_peaks(
    history: History, line: float
) -> dict[str, tuple[int, float, int, float]]:
    """Module -> (the most measured records in a row whose first/last time-step gradient
    ratio reached ``line``, the largest ratio, the recorded steps where the ratio was
    measurable: some gradient reached the last time step, and the median ratio: the
    definitions' measure).  An explosion through time shows on the first records, before
    one huge step saturates the recurrence and the ratio falls back; a noisy ratio crosses
    the line on isolated records."""
    first = history.act_series("time_grad_first")
    last = history.act_series("time_grad_last")
    out = {}
    for j, name in enumerate(history.module_names):
        measured = (last[:, j] > 0) & ~torch.isnan(first[:, j]) & torch.isfinite(last[:, j])
        if bool(measured.any()):
            ratios = first[measured, j] / last[measured, j]
            out[name] = (
                _longest_run(ratios >= line),
                float(ratios.max()),
                int(measured.sum()),
                float(ratios.median()),
            )
    return out


def _longest_run(flags: torch.Tensor) -> int:
    """The most consecutive True values in a 1-D boolean tensor."""
    best = run = 0
    for flag in flags.tolist():
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def weights_grew(signal: LayerSignal, factor: float) -> bool:
    """Whether the layer's weights ended ``factor`` times larger than they started: a
    learning rate that blew them up, not a gradient that faded (its |g|/|W| falls)."""
    return weight_growth(signal) > factor


def weights_blew_up(signal: LayerSignal, model_info: ModelInfo, factor: float) -> bool:
    """Whether the layer's weights grew ``factor`` times and ended well above (3x) the size
    a default initialisation gives them: steps too large, not a tiny initialisation growing
    into its normal size."""
    finite = signal.matrix_norm[torch.isfinite(signal.matrix_norm)]
    if not weights_grew(signal, factor) or finite.numel() == 0:
        return False
    return float(finite[-1]) > 3.0 * reference_norm(signal, model_info)


def weight_growth(signal: LayerSignal) -> float:
    """How many times larger the layer's weights ended than they started (its last finite
    norm over its first; Inf once a norm that started finite overflowed to +Inf, entries
    past ~1e19 or infinite; 1 when that cannot be told)."""
    norms = signal.param_norm
    finite = norms[torch.isfinite(norms)]
    if finite.numel() and float(finite[0]) > 0 and bool((norms == math.inf).any()):
        return math.inf
    if finite.numel() < 2 or float(finite[0]) <= 0:
        return 1.0
    return float(finite[-1]) / float(finite[0])


#: The symmetric-weights detector's lines for rows that are copies (its defaults; other
#: detectors that ask whether a layer's units are copies use these).
ROW_COPY_LINES = {
    # Row spread below this fraction of the weight RMS counts as identical rows...
    "relative_spread": 1e-6,
    # ...and so does a layer where this share of the rows are copies of another row
    # (docs/definitions.md: half of them).
    "twin_rows": 0.5,
}


def copy_lines(config: Mapping[str, Any] | None) -> dict:
    """:data:`ROW_COPY_LINES` with the user's overrides of the symmetric-weights detector
    (plugin ``symmetry``), for any detector that asks whether a layer's units are copies."""
    return thresholds(config, "symmetry", ROW_COPY_LINES)


def identical_rows(
    history: History, model_info: ModelInfo, t: dict
) -> dict[str, tuple[str, int, float, float, float, bool]]:
    """Weight matrices whose rows are still copies after training steps, per parameter:
    (module, step measured, row spread, weight RMS, share of copied rows, whether every
    row is identical).  Every row counts when their spread is below ``t["relative_spread"]``
    of the RMS; a share of ``t["twin_rows"]`` copies counts when the initialisation made
    them (a step that blew the weights up leaves the rows it missed tiny, and alike, next to
    the rest: the blow-up's).  Judged on the last record with finite weights."""
    measured = _last_finite_rows(history)
    at_start = _first_twins(history)
    numel = dict(zip(history.param_names, history.grad_series("numel")[0].tolist(), strict=True))
    first_step = history.steps[0] if history.steps else 0
    out = {}
    for name, module in zip(history.param_names, history.param_modules, strict=True):
        if name not in measured:
            continue  # never measured on finite weights: NaN is nonfinite_gradient's
        step, spread, norm, twins = measured[name]
        if step <= first_step:
            continue  # not yet trained: a zero-initialised layer may be fine
        shape = model_info.param_shapes.get(name, [])
        if len(shape) < 2 or shape[0] < 2 or _one_per_row(name, module, shape, model_info):
            continue
        rms = norm / math.sqrt(max(numel.get(name, 1), 1))
        every = spread <= t["relative_spread"] * rms + 1e-12
        copied = twins >= t["twin_rows"] and at_start.get(name, 0.0) >= t["twin_rows"]
        if every or copied:  # NaN (not measured): not copies
            out[name] = (module, step, spread, rms, twins, every)
    return out


def copied_at_start(
    history: History, model_info: ModelInfo, t: dict, modules: set[str]
) -> list[str]:
    """The weight matrices of ``modules`` whose rows were copies of each other (a share of
    at least ``t["twin_rows"]``: zero or constant initialisation) on the first record that
    measured them."""
    at_start = _first_twins(history)
    out = []
    for name, module in zip(history.param_names, history.param_modules, strict=True):
        shape = model_info.param_shapes.get(name, [])
        if module not in modules or len(shape) < 2 or shape[0] < 2:
            continue
        copied = at_start.get(name, 0.0) >= t["twin_rows"]
        if copied and not _one_per_row(name, module, shape, model_info):
            out.append(name)
    return out


def _one_per_row(name: str, module: str, shape: list[int], model_info: ModelInfo) -> bool:
    """Whether ``name`` is a table of one number per row held by a module that is not a
    weight layer (LeViT's per-head attention biases, zero at initialisation): its rows are
    not units' weights, so equal rows are no symmetry to break."""
    if math.prod(shape[1:]) != 1:
        return False
    layer = model_info.layer(module)
    return layer is None or layer.role not in (*DEPTH_ROLES, "embedding")


def _last_finite_rows(history: History) -> dict[str, tuple[int, float, float, float]]:
    """Per parameter: (step, row spread, weight norm, share of copied rows; NaN when not
    measured) of the latest record where spread and norm were both measured finite: a run
    that blew up later is judged on its last finite weights (rows a constant
    initialisation made identical stay identical up to the blow-up)."""
    spreads = history.grad_series("row_spread")
    norms = history.grad_series("param_norm")
    twins = history.grad_series("row_twins")
    both = torch.isfinite(spreads) & torch.isfinite(norms)
    out = {}
    for i, name in enumerate(history.param_names):
        rows = torch.nonzero(both[:, i]).flatten()
        if rows.numel():
            k = int(rows[-1])
            values = (float(spreads[k, i]), float(norms[k, i]), float(twins[k, i]))
            out[name] = (history.steps[k], *values)
    return out


def _first_twins(history: History) -> dict[str, float]:
    """Per parameter: the share of copied rows on the first record that measured it."""
    twins = history.grad_series("row_twins")
    out = {}
    for i, name in enumerate(history.param_names):
        rows = torch.nonzero(torch.isfinite(twins[:, i])).flatten()
        if rows.numel():
            out[name] = float(twins[int(rows[0]), i])
    return out


def functional_activations(history: History) -> dict[str, str]:
    """Module -> the activation (relu, sigmoid, tanh) called as a function on its output
    (``F.relu(self.fc(x))``), as found in the logged loss's graph: its units are measured
    on the module's output the way the activation sees them (gradscope/functional_acts.py)."""
    try:
        codes = history.act_series("functional_act")
    except KeyError:  # a report saved before this statistic existed
        return {}
    out = {}
    for j, name in enumerate(history.module_names):
        known = codes[:, j][torch.isfinite(codes[:, j])]
        if known.numel():
            out[name] = ACTIVATIONS.get(float(known[-1]), "relu")
    return out


def norm_gains(history: History, model_info: ModelInfo) -> dict[str, float]:
    """Normalisation layer -> its gain's root mean square at the start
    (:func:`gradscope.signals.norm_gains`), leaving out a layer whose first measured
    output is far larger (over 3x, plus 0.1) than that weight would allow: its weight is
    not its gain (Gemma's RMSNorm scales by ``1 + weight``, which starts at 0)."""
    output_rms = first_output_rms(history)
    return {
        name: gain
        for name, gain in raw_norm_gains(history, model_info).items()
        if output_rms.get(name, 0.0) <= 3.0 * gain + 0.1
    }

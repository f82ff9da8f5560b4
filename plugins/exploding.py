"""exploding_gradient: gradients that grow until no learning rate fits them.

Pascanu, Mikolov & Bengio (2013): the gradient explodes when it grows exponentially,
through time in a recurrence and likewise through depth.  It counts even when a small
learning rate or Adam keeps the loss from diverging.  Each is measured:

- **over training**: the gradient norm reaches ``growth`` times its size at the start;
- **through depth**: a layer's relative gradient is ``depth_growth`` times a later one's;
- **through time**: the gradient reaching a recurrence's first time step is
  ``through_time`` times what reaches its last on ``growth_steps`` measured steps in a
  row, or once before the steps it drove grew the weights ``blown_weights`` times;
- **gradients far larger than the weights** ("the gradient is too large") in a run that
  then overflowed, or whose loss ends ``worse_than_constant`` times what the best
  constant prediction scores: a layer's gradient norm was ``size_ratio`` times its
  weights' norm;
- **steps larger than the weights**: an update moves a layer by more than
  ``update_ratio`` of its size on ``update_steps`` recorded steps;
- **divergence**: the loss ends ``loss_rise`` times above where it started (the very
  first loss counts, so an early blow-up cannot hide itself);
- **the cause of a NaN**: gradients that grew ``nonfinite_growth`` times before turning
  non-finite are reported as exploding next to the NaN.

Why 1e3: the largest stable step of gradient descent scales as the inverse of the
gradient's size, so a gradient spanning three orders of magnitude has no learning rate
that suits both ends.  Gradients are read after GradScaler unscaling, so loss scaling
never looks like an explosion; a constantly large gradient (a loss multiplied by 1e4)
is not growth.  The parts of a GAN follow their rival, so their loss and gradient size
over training are not judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import (
    LayerSignal,
    LossTrend,
    early,
    init_scale,
    loss_trend,
    over_run,
)
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import (
    RIVAL_CERTAIN_LOSS,
    clipped_at,
    data_evidence,
    depth_layers,
    first_nonfinite_step,
    first_step_where,
    fmt,
    gan_roles,
    growth_before_nonfinite,
    growth_from_start,
    loss_multiplier,
    loss_rise_before_nonfinite,
    loss_vs_constant,
    over,
    part_of,
    reference_norm,
    relative_grad,
    through_time_peaks,
    times,
    update_ratio,
    weight_growth,
    weights_blew_up,
)

NAME = "exploding"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("grad_l2", "param_norm")
DEFAULTS = {
    # The gradient norm over its size at the start of the run...
    "growth": 1e3,
    # ...on at least this many recorded steps.
    "growth_steps": 2,
    # A layer's relative gradient over the smallest one of the later layers, when no single
    # layer on the way made more than ``steady_share`` of the growth in orders of magnitude:
    # layer by layer, not one jump such as ConvNeXt's layer scale shrinking its blocks'
    # gradient 1e4x at once (against the typical later layer, that jump alone reached 1e3
    # on a healthy two-stage ConvNeXt, 3 seeds of 4).
    "depth_growth": 1e3,
    "steady_share": 0.5,
    # A layer's gradient norm over its weights' norm (at least their default-init size).
    "size_ratio": 1e3,
    # The gradient reaching a recurrence's first time step over what reaches its last: in
    # the median over the run, or on ``growth_steps`` measured records in a row (a noisy
    # ratio crosses it on isolated ones)...
    "through_time": 1e3,
    # ...the latter only in a run whose loss did not fall below this fraction of its start
    # (one that learned shows large ratios without growth: see _through_time).
    "time_learned": 0.1,
    # One step moving a layer's weights by more than this fraction of their size...
    "update_ratio": 1.0,
    # ...on at least this many recorded steps.
    "update_steps": 2,
    # The loss at the end over the loss at the start...
    "loss_rise": 10.0,
    # ...or over this, when it also ends ``worse_than_constant`` times what the best
    # constant prediction scores (the definitions' allowed band for divergence: a model
    # made worse than knowing nothing diverged, 10x or not).
    "worse_rise": 3.3,
    "worse_than_constant": 2.0,
    # A loss ending this many times a constant prediction's is absurd (no fault but badly
    # scaled weights or inputs gets there): then a gradient ``absurd_size_ratio`` times its
    # weights is enough (a pre-LN Transformer at init std x4 under AdamW: BCE 1.8e3
    # against 0.53 for a constant, the embedding's gradient ~5e2 its weights).
    "absurd_loss": 100.0,
    "absurd_size_ratio": 1e2,
    # A GAN player has no constant prediction: its gradient far larger than the weights
    # counts when the logged loss ends above this (the rival certain about every sample:
    # D(G(z)) or 1 - D(x) below ~2%).
    "absurd_player_loss": RIVAL_CERTAIN_LOSS,
    # A loss peak this many times its start, with one step that moved most layers by more
    # than their size: a transient explosion.
    "transient_rise": 3.0,
    # ...and this many times, when the step is one of the first ``window`` records: there
    # a tiny initialisation's or Adam's first steps replace the weights by design, but
    # without making the loss jump several times (AdamW at lr 3 on BEiT: 1.4 -> 162 on the
    # first step; at lr 1.0 on Qwen2: 4.1 -> 21, and on Swin at lr 0.3: 5.8x; each then
    # back near a constant prediction's loss).  10x until those two stranger cases; 4x
    # moved nothing on the 5,000 tuning runs and no healthy real-architecture recipe.
    "early_transient_rise": 4.0,
    # A transient explosion after which the loss ends below this fraction of a constant
    # prediction's and of its start did not stop training: info, not a warning (a CNN at
    # Adagrad lr 0.1 jumped 0.58 -> 3.6 on one step and ended at 0.085 against 0.18 for
    # a constant; the definitions' "learned" line).
    "recovered": 0.9,
    # One step that moves most layers by this many times their size, after which every
    # gradient is exactly 0 on at least ``window`` records: the step threw the model where
    # nothing flows back (REINFORCE at Adam lr 5: a deterministic policy, log-prob 0).
    "collapse_update": 10.0,
    # Most layers' weights grew this many times and ended over 3x a default
    # initialisation's size, while the loss ends ``blown_loss`` of a constant prediction's
    # or worse: steps too large threw the weights out, though no single step looked wild
    # (Gemma2 at AdamW lr 1.0: every weight matrix 220x its start, 60x its default size,
    # the loss at ln(vocabulary); each step moved them by lr, 1/k of their size at step k).
    "blown_growth": 10.0,
    "blown_loss": 0.9,
    # Weight growth (end over start) that makes a single through-time explosion a regime:
    # the steps it drove blew the recurrence's weights up.
    "blown_weights": 10.0,
    # Growth before a NaN/Inf that makes the explosion its cause.
    "nonfinite_growth": 1e2,
    # Records at the start and end of the run that are compared.
    "window": 5,
}


@dataclass
class _Evidence:
    """What each criterion measured, and the layer it points at."""

    what: list[str]
    culprits: list[str]
    numbers: dict[str, Any]
    #: The sentences of "too large for its weights, the loss far above a constant's".
    too_large: list[str] = field(default_factory=list)


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """Find gradients that grew over training, depth or time, or steps too large."""
    t = thresholds(config, NAME, DEFAULTS)
    layers = depth_layers(history, model_info)
    if not layers:
        return []
    adversarial = bool(gan_roles(history, model_info))
    trend = loss_trend(history, int(t["window"]))
    evidence = _Evidence([], [], {})
    nonfinite = _went_nonfinite(history)
    _over_training(history, layers, t, adversarial, nonfinite, evidence)
    _too_large(history, layers, model_info, trend, t, nonfinite, adversarial, evidence)
    _through_depth(layers, model_info, t, evidence)
    _through_time(history, layers, trend, t, evidence)
    _big_steps(layers, model_info, t, evidence)
    diverged = not adversarial and _diverged(history, trend, t, evidence)
    if not evidence.what and not adversarial:
        _one_wild_step(history, layers, model_info, trend, t, evidence)
    if not evidence.what and not adversarial:
        _collapsed(history, layers, model_info, t, evidence)
    if not evidence.what and not adversarial:
        _blown_up(history, layers, model_info, trend, t, evidence)
    if not evidence.what:
        return []
    # The explosion's steps blew weights up, or left no gradient at all: training is over.
    blown = "blown_weights" in evidence.numbers or "collapse_update" in evidence.numbers
    depth = {layer.name: i for i, layer in enumerate(layers)}
    # The input-most layer a criterion pointed at: where the blow-up can start (an RNN's
    # recurrence, the first badly scaled layer), not the head that inherits it.  The loss
    # alone points nowhere: then the layer whose gradient grew most.
    culprit = (
        min(evidence.culprits, key=lambda n: depth.get(n, len(depth)))
        if evidence.culprits
        else _most_grown(layers)
    )
    layer = next((s for s in layers if s.name == culprit), layers[0])
    ratio = loss_vs_constant(history, trend)  # NaN when never measured
    recovered = _recovered(trend, ratio, t, evidence)
    severity = "error" if diverged or nonfinite or blown else "warning"
    return [
        Finding(
            kind="exploding_gradient",
            layer=culprit,
            severity="info" if recovered else severity,
            step=first_step_where(history, over(layer.grad_norm, _growth_line(layer, t))),
            message=_message(
                evidence.what,
                nonfinite,
                clipped_at(history),
                steps=_steps(evidence, nonfinite or diverged or blown),
            )
            + (_recovered_text(trend.last, ratio) if recovered else ""),
            evidence={
                **evidence.numbers,
                "grad_norm_peak": _finite_max(layer.grad_norm),
                "init_scale": {s.name: init_scale(s, model_info) for s in layers},
                **data_evidence(history, model_info),
                "loss_first": trend.first,
                "loss_last": trend.last,
                "loss_peak": trend.peak,
                "loss_nonfinite": nonfinite,
                "lr": model_info.lr,
                "loss_multiplier": loss_multiplier(history),
                "clipped_at": clipped_at(history),
                "thresholds": {k: t[k] for k in ("growth", "update_ratio", "loss_rise")},
            },
        )
    ]


def _most_grown(layers: list[LayerSignal]) -> str:
    return max(layers, key=lambda s: _finite_max(s.grad_norm) / max(early(s.grad_norm), 1e-30)).name


def _over_training(
    history: History,
    layers: list[LayerSignal],
    t: dict,
    adversarial: bool,
    nonfinite: bool,
    evidence: _Evidence,
) -> None:
    """The gradient norm grew by ``growth`` (or by ``nonfinite_growth`` before a NaN, or
    the loss did: a step that throws the loss to 1e23 leaves no finite gradient to grow)."""
    if adversarial:
        return
    # Before a NaN/Inf: a gradient that grew after the values broke says nothing of why.
    growth = growth_before_nonfinite(history, layers) if nonfinite else growth_from_start(layers)
    line = t["nonfinite_growth"] if nonfinite else t["growth"]
    steps_over = int((growth >= line).sum()) if growth is not None else 0
    if growth is not None and steps_over >= (1 if nonfinite else int(t["growth_steps"])):
        peak = float(growth.max())
        evidence.what.append(f"the gradient norm grew {fmt(peak)}x from its size at the start")
        evidence.culprits.append(_most_grown(layers))
        evidence.numbers["grad_growth"] = peak
        return
    rose = loss_rise_before_nonfinite(history) if nonfinite else None
    if rose is not None and rose >= t["nonfinite_growth"]:
        evidence.what.append(f"the loss rose {fmt(rose)}x from its start before it overflowed")
        evidence.culprits.append(_most_grown(layers))
        evidence.numbers["loss_rise_before_nonfinite"] = rose


def _too_large(
    history: History,
    layers: list[LayerSignal],
    model_info: ModelInfo,
    trend: LossTrend,
    t: dict,
    nonfinite: bool,
    adversarial: bool,
    evidence: _Evidence,
) -> None:
    """Gradients far larger than the weights, in a run that then overflowed or whose loss
    ends ``worse_than_constant`` times a constant prediction's.  Size alone is not growth
    (a loss scaled by 1e4 under Adam trains normally), but with either it exploded: Adam
    or a small rate keeps each step small, and the model never gets anywhere."""
    if adversarial:  # no constant prediction for a GAN player: its rival's certainty
        # In the loss function's own units, and risen over the run (a loss multiplied
        # by a factor the loss node does not show falls as the player learns).
        scale = loss_multiplier(history) or 1.0
        worse = (
            trend.known
            and trend.last / scale > t["absurd_player_loss"]
            and trend.last > min(trend.first, trend.initial)  # the very first loss counts
        )
    else:
        worse = _worse_than_knowing_nothing(history, trend, t)
    if not (nonfinite or worse):
        return
    ratio = math.nan if adversarial else loss_vs_constant(history, trend)
    line = t["absurd_size_ratio"] if ratio >= t["absurd_loss"] else t["size_ratio"]
    _size_ratio(layers, model_info, t, line, evidence)
    if worse and "size_ratio" in evidence.numbers:
        if adversarial:
            evidence.what.append(
                f"the loss ends at {fmt(trend.last)}: the rival is all but certain about "
                "every sample (a GAN player's binary cross-entropy is 0.69 against a "
                "guessing discriminator)"
            )
        else:
            evidence.what.append(
                f"the loss ends at {fmt(trend.last)}, {fmt(ratio)}x what predicting the "
                "same output for every input scores"
            )
            evidence.numbers["loss_vs_constant"] = ratio
        evidence.too_large = list(evidence.what)


def _size_ratio(
    layers: list[LayerSignal], model_info: ModelInfo, t: dict, line: float, evidence: _Evidence
) -> None:
    """A gradient ``line`` times its weights on ``growth_steps`` records (or on the only
    finite one)."""
    for layer in layers:
        rel = relative_grad(layer, model_info)
        finite = rel[torch.isfinite(rel)]
        need = min(int(t["growth_steps"]), max(finite.numel(), 1))
        if finite.numel() and int((finite >= line).sum()) >= need:
            evidence.what.append(
                f"the gradient of {layer.name} is {fmt(float(finite.max()))}x the size of "
                "its weights"
            )
            evidence.culprits.append(layer.name)
            evidence.numbers["size_ratio"] = float(finite.max())
            return


def _worse_than_knowing_nothing(history: History, trend: LossTrend, t: dict) -> bool:
    """The loss ends ``worse_than_constant`` times what the best constant prediction scores
    (in the logged loss's units: a loss multiplied by a factor is compared with the constant
    multiplied by it); unmeasured: False."""
    return loss_vs_constant(history, trend) >= t["worse_than_constant"]


def _through_depth(
    layers: list[LayerSignal], model_info: ModelInfo, t: dict, evidence: _Evidence
) -> None:
    """A layer's relative gradient (its median over the run, as the definitions measure it)
    is ``depth_growth`` times a later layer's of the same part (parts trained by different
    optimizers, a GAN's players, are separate chains: the generator's last layer is not
    "before" the discriminator in the backward pass of its own loss)."""
    chains: dict[str | None, list[tuple[LayerSignal, float]]] = {}
    for s in layers:
        chains.setdefault(part_of(model_info, s.name), []).append(
            (s, over_run(relative_grad(s, model_info)))
        )
    for chain in chains.values():
        if _grows_through(chain, t, evidence):
            return


def _steady_growth(rel: list[float], i: int, share: float) -> float:
    """``rel[i]`` over the smallest relative gradient after it (the chain's last layer, a
    head, left out) when the gradient grew steadily from there to layer ``i`` (no single
    layer made more than ``share`` of the growth in orders of magnitude); else 0."""
    path = rel[i:-1]
    if len(path) < 3 or not all(math.isfinite(r) and r > 0 for r in path):
        return 0.0
    k = min(range(1, len(path)), key=path.__getitem__)
    total = math.log(path[0] / path[k])
    steps = [abs(math.log(path[j] / path[j + 1])) for j in range(k)]
    return path[0] / path[k] if total > 0 and max(steps) <= share * total else 0.0


def _grows_through(
    chain: list[tuple[LayerSignal, float]], t: dict, evidence: _Evidence
) -> bool:
    """Whether a layer of one chain (forward order) has ``depth_growth`` times the relative
    gradient of a later layer, grown step by step on the way (recorded in ``evidence``)."""
    rel = [r for _, r in chain]
    for i, (layer, _) in enumerate(chain[:-1]):
        later = [r for r in rel[i + 1 :] if math.isfinite(r) and r > 0]
        if len(later) < 2 or not math.isfinite(rel[i]):
            # Growth "layer by layer" needs a chain; two layers of different scales are not.
            continue
        # Against the smallest later layer but the head (a near-converged head's tiny
        # gradient is not growth through the layers before it), when the gradient grew
        # layer by layer from there: one jump (a block gated by a layer scale or a
        # zero-initialised branch) is not "the gradient grows layer by layer".
        ratio = _steady_growth(rel, i, t["steady_share"])
        if ratio >= t["depth_growth"]:
            evidence.what.append(
                f"{layer.name} gets {fmt(ratio)}x the gradient (relative to its weights) "
                "of the layers after it: it grows layer by layer toward the input"
            )
            evidence.culprits.append(layer.name)
            evidence.numbers["depth_growth"] = ratio
            return True
    return False


def _through_time(
    history: History, layers: list[LayerSignal], trend: LossTrend, t: dict, evidence: _Evidence
) -> None:
    """The first time step of a recurrence gets ``through_time`` times what the last gets:
    in the median over the run (the definitions' measure), or on ``growth_steps`` measured
    records in a row (or on every one where a ratio was measurable) of a run whose loss did
    not fall below ``time_learned`` of its start, or on one after which the recurrence's
    weights grew ``blown_weights`` times: an explosion shows first, before a huge step
    saturates the recurrence (and leaves no gradient at either end).  A run that learned
    well can show a large ratio on a few records without any growth: a per-token loss
    sends the first input the gradient of every later prediction, the last input only its
    own (a healthy GRU language model: 7e4 on one record, 260 in the median)."""
    grown = {layer.name: weight_growth(layer) for layer in layers}
    learned = trend.known and trend.last <= t["time_learned"] * trend.first
    peaks = through_time_peaks(history, t["through_time"])
    for name, (count, peak, measured, median) in peaks.items():
        blown = count >= 1 and grown.get(name, 1.0) >= t["blown_weights"]
        early = count >= min(int(t["growth_steps"]), measured) and not learned
        if median >= t["through_time"] or early or blown:
            grew = times(grown[name])
            then = f", and the steps it drove grew its weights {grew}" if blown else ""
            reach = (
                f"is {fmt(peak)}x what reaches the last"
                if math.isfinite(peak)
                else "overflows float32 (Inf) while what reaches the last is finite"
            )
            evidence.what.append(
                f"in {name} the gradient reaching the first time step {reach}: it grows at "
                f"every step back through time{then}"
            )
            if blown:
                evidence.numbers["blown_weights"] = grown[name]
            evidence.culprits.append(name)
            evidence.numbers["through_time_ratio"] = peak
            return


def _big_steps(
    layers: list[LayerSignal], model_info: ModelInfo, t: dict, evidence: _Evidence
) -> None:
    """Recorded steps on which some layer's update was larger than ``update_ratio`` of its
    weights, ``update_steps`` of them (one layer on one step, another on the next: each
    step threw some of the weights away)."""
    ratios = [
        torch.nan_to_num(update_ratio(layer, model_info), nan=0.0, posinf=0.0)
        for layer in layers
    ]
    stacked = torch.stack(ratios, dim=1)  # records x layers
    over_line = stacked > t["update_ratio"]
    if int(over_line.any(dim=1).sum()) < int(t["update_steps"]):
        return
    peaks = {
        layer.name: float(stacked[:, j].max())
        for j, layer in enumerate(layers)
        if bool(over_line[:, j].any())
    }
    step = int(over_line.any(dim=1).float().argmax())  # the first step over the line
    first = layers[int(over_line[step].float().argmax())].name
    evidence.what.append(
        f"one optimizer step moves {first}'s weights by {fmt(peaks[first])} of their "
        "size (healthy training moves them by about 0.001)"
    )
    evidence.culprits.append(first)
    evidence.numbers["update_ratio_peak"] = peaks


def _one_wild_step(
    history: History,
    layers: list[LayerSignal],
    model_info: ModelInfo,
    trend: LossTrend,
    t: dict,
    evidence: _Evidence,
) -> None:
    """One recorded step that moved most layers' weights by more than their size while the
    loss jumped ``transient_rise`` times above where it started: a transient explosion
    (a learning rate raised mid-run), even when the loss recovers afterwards.  Within the
    first ``window`` records only with a loss jump of ``early_transient_rise``, and not
    one layer alone (a fresh stem's first steps).  The jump is a loss logged after the
    first: a loss that starts at its peak and falls never jumped (a recurrent cell at
    recurrent weights x3 starts at a hinge loss of 19 and is at 0.84 one step later)."""
    start = min(trend.first, trend.initial)
    losses = history.losses()[1:]
    later = losses[torch.isfinite(losses)]
    peak = float(later.max()) if later.numel() else math.nan
    if not (trend.known and start > 0 and peak >= t["transient_rise"] * start):
        return
    references, stacked = _update_ratios(layers, model_info)
    measured = torch.isfinite(stacked).any(dim=1)
    if len(layers) < 3 or not bool(measured.any()):
        return
    share = (stacked > t["update_ratio"]).float().mean(dim=1)
    window = int(t["window"])
    if peak >= t["early_transient_rise"] * start:
        # The first records, against the default-init size at least: a tiny
        # initialisation's first steps are larger than its weights by design.
        first_steps = [
            layer.update_norm[:window] / layer.param_norm[:window].clamp_min(ref)
            for layer, ref in zip(layers, references, strict=True)
        ]
        moved = torch.stack(first_steps, dim=1) > t["update_ratio"]
        share[:window] = moved.float().mean(dim=1)
    else:
        share[:window] = 0.0  # see ``early_transient_rise``
    k = int(share.argmax())
    if float(share[k]) < 0.5:
        return
    evidence.what.append(
        f"one optimizer step moved {float(share[k]):.0%} of the layers by more than their own "
        f"size while the loss jumped from {fmt(start)} to {fmt(peak)}"
    )
    evidence.culprits.append(layers[int(torch.nan_to_num(stacked[k], nan=0.0).argmax())].name)
    evidence.numbers["wild_step_share"] = float(share[k])


def _recovered(trend: LossTrend, vs_constant: float, t: dict, evidence: _Evidence) -> bool:
    """Whether the only evidence is one wild step (:func:`_one_wild_step`) and the loss
    recovered from it: it ends below ``recovered`` of a constant prediction's loss
    (``vs_constant``, the loss over it; NaN when never measured: not recovered) and of
    where training started.  Severity tracks harm: such a spike is worth knowing, and no
    reason to stop."""
    if len(evidence.what) != 1 or "wild_step_share" not in evidence.numbers:
        return False
    start = min(trend.first, trend.initial)
    return vs_constant < t["recovered"] and trend.last < t["recovered"] * start


def _recovered_text(last: float, vs_constant: float) -> str:
    """The sentence that says why a recovered spike is info (see :func:`_recovered`):
    the loss ``last`` it ended at, ``vs_constant`` times a constant prediction's (a loss
    that fell to exactly 0 gives no baseline to quote)."""
    baseline = f" ({fmt(last / vs_constant)})" if vs_constant > 0 else ""
    return (
        f" The loss recovered: it ended at {fmt(last)}, below what predicting the same "
        f"output for every input scores{baseline}, so this spike did not stop "
        "training; a larger rate or a longer run may not recover."
    )


def _update_ratios(
    layers: list[LayerSignal], model_info: ModelInfo
) -> tuple[list[float], torch.Tensor]:
    """Each layer's default-init weight norm, and its update over its weights per record
    (records x layers; NaN off detail steps).  Against the weights' own size, a tenth of
    the default-init size at least: a zero-initialised layer's first step is not a
    blow-up; BERT-style inits are 5x smaller than PyTorch's default, and a step larger
    than such weights replaces them all the same."""
    references = [max(reference_norm(layer, model_info), 1e-12) for layer in layers]
    pairs = zip(layers, references, strict=True)
    ratios = [s.update_norm / s.param_norm.clamp_min(0.1 * ref) for s, ref in pairs]
    return references, torch.stack(ratios, dim=1)


def _collapsed(
    history: History,
    layers: list[LayerSignal],
    model_info: ModelInfo,
    t: dict,
    evidence: _Evidence,
) -> None:
    """One step that moved most layers by ``collapse_update`` times their size, and from the
    next record on every gradient exactly 0 (at least ``window`` records): the model was
    thrown where nothing flows back and cannot learn again, however the logged loss looks
    (a policy-gradient surrogate reads 0 once the policy is deterministic).  A loss that
    reaches 0 by learning (a triplet margin met) gets there by small steps."""
    if len(layers) < 2:
        return
    ratios = _update_ratios(layers, model_info)[1]
    share = (ratios > t["collapse_update"]).float().mean(dim=1)
    # Every parameter's gradient, not only the weight layers' (NaN where none had one).
    norms = history.grad_series("grad_l2")
    total = norms.nan_to_num(0.0).sum(dim=1).masked_fill(norms.isnan().all(dim=1), math.nan)
    for k in torch.nonzero(share >= 0.5).flatten().tolist():
        after = total[k + 1 :]
        if after.numel() >= int(t["window"]) and bool((after == 0).all()):
            peak = float(torch.nan_to_num(ratios[k], nan=0.0).max())
            evidence.what.append(
                f"one optimizer step moved {float(share[k]):.0%} of the layers by up to "
                f"{fmt(peak)}x their size, and from the next step on every gradient is exactly "
                "0: the step threw the model where nothing flows back, so it cannot learn again"
            )
            moved = torch.nan_to_num(ratios[k], nan=0.0)
            evidence.culprits.append(layers[int(moved.argmax())].name)
            evidence.numbers["collapse_update"] = peak
            return


def _blown_up(
    history: History,
    layers: list[LayerSignal],
    model_info: ModelInfo,
    trend: LossTrend,
    t: dict,
    evidence: _Evidence,
) -> None:
    """Most layers' weights grew ``blown_growth`` times and ended far above a default
    initialisation's size while the loss ends no better than a constant prediction's
    (``blown_loss`` of it or more): the steps were too large for the weights, though after
    the first few none moved them by more than their (grown) size."""
    if len(layers) < 2 or loss_vs_constant(history, trend) < t["blown_loss"]:  # NaN: False
        return
    blown = [s for s in layers if weights_blew_up(s, model_info, t["blown_growth"])]
    if len(blown) * 2 <= len(layers):
        return
    top = max(blown, key=weight_growth)
    evidence.what.append(
        f"the optimizer's steps blew the weights up: {len(blown)} of {len(layers)} layers "
        f"grew over {fmt(t['blown_growth'])}x ({top.name} {times(weight_growth(top))}) to far "
        "above a default initialisation's size, while the loss ends no better than predicting "
        "the same output for every input"
    )
    evidence.culprits.append(blown[0].name)
    evidence.numbers["blown_up_layers"] = len(blown)
    evidence.numbers["blown_weights"] = weight_growth(top)


def _diverged(history: History, trend: LossTrend, t: dict, evidence: _Evidence) -> bool:
    """The loss ended ``loss_rise`` times above where it started (or ``worse_rise`` times,
    ending ``worse_than_constant`` times a constant prediction's loss), judged from the very
    first loss too, so a blow-up within the first steps cannot raise its own baseline.  (A
    loss that peaks and comes back down is not counted: on the tuning part such peaks were
    as common in runs that recovered as in runs that exploded.)"""
    start = min(trend.first, trend.initial)
    if not trend.known or not start > 0:
        return False
    rise = trend.last / start
    if rise <= t["worse_rise"]:
        return False
    worse = loss_vs_constant(history, trend)  # NaN when never measured
    if rise <= t["loss_rise"] and not worse >= t["worse_than_constant"]:
        return False
    evidence.what.append(
        f"the loss rose from {fmt(start)} to {fmt(trend.last)}"
        + (
            f", {fmt(worse)} times what predicting the same output for every input scores"
            if worse >= t["worse_than_constant"]
            else ""
        )
    )
    evidence.numbers["loss_rise"] = rise
    return True


def _went_nonfinite(history: History) -> bool:
    return first_nonfinite_step(history) is not None


def _growth_line(layer: LayerSignal, t: dict) -> float:
    return max(early(layer.grad_norm), 1e-30) * t["nonfinite_growth"]


def _finite_max(series: torch.Tensor) -> float:
    finite = series[torch.isfinite(series)]
    return float(finite.max()) if finite.numel() else math.nan


def _steps(evidence: _Evidence, blew_up: bool) -> str:
    """Which steps the evidence shows (see :func:`_message`)."""
    if blew_up or "update_ratio_peak" in evidence.numbers or "wild_step_share" in evidence.numbers:
        return "large"
    if evidence.what == evidence.too_large:
        return "small"
    uneven = {"depth_growth", "through_time_ratio"} & evidence.numbers.keys()
    return "uneven" if uneven and "grad_growth" not in evidence.numbers else "large"


def _message(what: list[str], nonfinite: bool, clip: float | None, steps: str = "large") -> str:
    """The finding's text.  ``steps``: "large" (steps larger than the weights, a diverging
    or overflowing run), "small" (the gradient is too large for the weights and the loss
    far above a constant prediction's, with small steps), or "uneven" (growth through
    depth, time or training, with no step seen too large)."""
    if clip is not None:
        return (
            f"Gradients explode: {'; '.join(what)}. Your loop already clips the gradient "
            f"norm at {clip:.3g} (the total norm equals it on most recorded steps): that "
            "bounds each step, but the gradients behind it keep growing and the clipped "
            "direction follows the largest of them"
            + ("; the values then overflowed to NaN/Inf" if nonfinite else "")
            + ". Fix the cause: the initialisation if the weights start too large (a "
            "recurrence's weights especially), or the learning rate."
        )
    if steps == "uneven":
        return (
            f"Gradients explode: {'; '.join(what)}. No single learning rate suits a "
            "gradient this uneven: one that moves the parts with the smallest gradient at "
            "all is far past the stable step for the largest. Fix the initialisation if the "
            "weights start too large (a recurrence's especially), or clip the gradient norm."
        )
    if steps == "small":
        return (
            f"Gradients explode: {'; '.join(what)}. The optimizer keeps each step small "
            "(Adam divides by the gradient's size, or the rate is small), so nothing "
            "diverges, but the model stays stuck where a signal this large puts it. Fix "
            "what makes it large: the initialisation if the weights start too large, the "
            "inputs if they are far from unit scale."
        )
    return (
        f"Gradients explode: {'; '.join(what)}. Steps this large throw the weights around "
        "instead of descending the loss"
        + ("; the values then overflowed to NaN/Inf" if nonfinite else "")
        + ". Clip the gradient norm, lower the learning rate, or fix the initialisation "
        "if the weights start too large."
    )


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Fixes for an exploding gradient, best first, chosen by its evidence; clipping is
    left out when the loop clips already."""
    builders = _plan(finding, info)
    if finding.evidence.get("clipped_at") is not None:
        return [b for b in builders if b is not fix.clip_grad_norm]
    return builders


def _plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    layer = info.layer(finding.layer)
    recurrent = layer is not None and layer.role in ("vanilla_rnn", "gated_rnn")
    init = fix.init_for(info)
    times = fix.lr_times_usual(info, finding.evidence.get("loss_multiplier"))
    fast = times >= fix.FAR_ABOVE_USUAL
    if fix.started_too_large(finding) and not recurrent and not times >= fix.ABSURD_RATE:
        # Weights several times Kaiming's size make the gradient large before any step; a
        # rate a few times the usual one comes next (a 100x one, or a loss multiplied by
        # 1e6 under SGD, is the first suspect whatever the weights).
        return [init, fix.lower_lr, fix.clip_grad_norm] if fast else [
            init, fix.clip_grad_norm, fix.lower_lr
        ]
    if fast:
        # A rate several times the optimizer's usual largest one (a loss multiplied by a
        # constant multiplies SGD's steps by it too): the first suspect.
        return [fix.lower_lr, fix.clip_grad_norm, fix.orthogonal_init if recurrent else init]
    if recurrent:
        # The recurrence multiplies by the same matrix every step: make it norm-preserving.
        return [fix.orthogonal_init, fix.clip_grad_norm, fix.lower_lr]
    if fix.inputs_unscaled(finding):
        # Weights of a normal size, data far from unit scale: the signal is large from
        # the first layer on, so scale the data.
        return [fix.normalize_inputs, fix.clip_grad_norm, fix.lower_lr]
    peaks = finding.evidence.get("update_ratio_peak") or {}
    giant = [v for v in peaks.values() if isinstance(v, float) and v > 1.0]
    if giant:
        # Normal weights, steps larger than the weights themselves: the learning rate.
        return [fix.lower_lr, fix.clip_grad_norm, init]
    return [fix.clip_grad_norm, fix.lower_lr, init]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``exploding_gradient`` findings, best first (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "exploding_gradient", plan)

"""vanishing_gradient: gradients that shrink toward the input until early layers stop learning.

Three ways a gradient vanishes (Bengio, Simard & Frasconi 1994; Glorot & Bengio 2010), each
measured, each a fault only when it hurts: the loss has stalled.

- **Through depth**: a layer's relative gradient, ||grad|| / ||weight||, is below
  ``depth_ratio`` of a later layer's.  Under gradient descent a layer's relative step is
  ``lr * ratio``: a layer getting 1% of what a later layer gets has moved by 1% when the
  later one has changed completely.
- **Through time**: the gradient reaching a recurrence's first time step is below
  ``through_time`` of what reaches its last (measured on the recurrent layer's input).
- **Over training**: a layer's gradient fell to ``time_ratio`` of its start while the loss
  did not improve (a GAN generator facing a winning discriminator).

The same property on a model whose loss falls as it should is reported as ``info``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import (
    LossTrend,
    early,
    init_scale,
    loss_trend,
    over_run,
    recent,
)
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import (
    HARM_DEFAULTS,
    MIN_LOSSES_FOR_A_STALL,
    RIVAL_CERTAIN_LOSS,
    blocked_paths_possible,
    copy_lines,
    data_evidence,
    depth_layers,
    first_nonfinite_step,
    first_step_where,
    fitted,
    fmt,
    gan_roles,
    identical_rows,
    looped_layers,
    loss_multiplier,
    loss_shows_harm,
    loss_vs_constant,
    no_better_than_constant,
    norm_gains,
    output_share,
    predicts_a_constant,
    relative_grad,
    stall_text,
    through_time_ratios,
    times,
    total_grad_norm,
    turn_trend,
    under,
    weight_growth,
    weights_blew_up,
    weights_grew,
)

NAME = "vanishing"
#: A discriminator whose first loss is this many times a guessing one's line started with
#: outputs far too large: its initialisation's scale is the first fix.
ABSURD_START = 100.0
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("grad_l2", "param_norm")
DEFAULTS = {
    # A layer whose relative gradient is below this fraction of the largest one after it.
    "depth_ratio": 1e-2,
    # Through time: below this fraction, with a stalled loss, the problem is an error.
    "severe_ratio": 1e-5,
    # The harm test's thresholds: stall, plateau, constant_output, constant_loss.
    **HARM_DEFAULTS,
    # Records at the end of the run that are judged.
    "window": 5,
    # A layer whose relative gradient fell below this fraction of its own start...
    "time_ratio": 0.1,
    # ...for a model trained as one (not a GAN's generator), this fraction.
    "model_time_ratio": 0.01,
    # Through depth: a gap this large to the largest later layer is a warning even when no
    # stall can be seen (a short diagnose() run).
    "depth_severe": 1e-5,
    # A layer whose weights grew this many times is not judged for vanishing through depth
    # unless the model ended no better than a constant prediction (diverged or collapsed).
    "grown_weights": 10.0,
    # The gradient reaching a recurrence's first step below this fraction of its last (the
    # definitions' line; with a loss that improved by less than ``time_stall`` or no better
    # than a constant prediction's: a plateau is not enough here, since a converged gated
    # RNN on a short-range task shows the same small ratio).
    "through_time": 1e-2,
    # ...and with a loss that improved by less than this fraction over the run.
    "time_stall": 0.1,
    # Every layer's relative gradient below this on every step, with a loss that shows
    # harm: too small to move any weight at a usual learning rate (lr * rho is the
    # relative step; 1e-3 per step would take lr >= 1000): stuck from the start.
    "stuck_ratio": 1e-6,
    # A GAN generator under the saturating loss whose samples the discriminator scores at
    # most this (median D(G(z)) over the run's second half) gets that share of the
    # gradient the non-saturating loss would give: starved, whether or not it ever fell.
    "starved_score": 0.05,
    # A discriminator trained alone whose loss ends above this is worse than one that
    # scores every sample alike (2 ln 2 = 1.39 for the two-term binary cross-entropy, 2 for
    # the hinge loss, at most 0.5 for least squares): harmed, however far its loss fell
    # from a bad start (a large initialisation: 1e6 -> 300).
    "guessing_discriminator": RIVAL_CERTAIN_LOSS,
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """Find gradients that vanished through depth, through time or over training."""
    # The symmetric-weights detector's lines (with the user's overrides): a depth finding
    # names layers whose rows are copies by the same rule that detector reports them by.
    t = {**thresholds(config, NAME, DEFAULTS), "copy_lines": copy_lines(config)}
    window = int(t["window"])
    trend = loss_trend(history, window)
    layers = depth_layers(history, model_info)
    constant, share = predicts_a_constant(history, trend, t)  # never measured: not constant
    roles = gan_roles(history, model_info)
    if roles:
        # Whether the generator's loss was seen in its saturating form (unknown without a
        # logged loss: then it may be): the non-saturating loss is no fix for one that is.
        fake = history.act_series("fake_score")
        t["saturating_loss_seen"] = not trend.known or bool(torch.isfinite(fake).any())
        return _gan_players(history, model_info, layers, roles, (trend, share), t)
    beaten = no_better_than_constant(history, trend, t)  # by a constant prediction
    # A loss resting at exactly zero is solved (a triplet margin met by every sample): the
    # gradient it no longer gives is convergence, however early the loss got there.
    solved = fitted(trend)
    no_better = not solved and (
        (trend.known and trend.improvement < t["stall"]) or constant or beaten
    )
    time_stalled = not solved and (
        (trend.known and trend.improvement < t["time_stall"]) or constant or beaten
    )
    found = _through_time(history, model_info, trend, time_stalled, t, share if constant else None)
    if len(layers) < 2:
        return found
    series = [relative_grad(layer, model_info) for layer in layers]
    rel = [over_run(s) for s in series]
    # Against the typical later layer, not the largest: one freshly initialised head takes
    # hundreds of times the gradient of a healthy transformer's layers.  A model that
    # predicts a constant (or whose loss is no better than a constant prediction's) has
    # shown the harm: there the gap to the largest later layer counts.
    # A loss no better than a constant's: the model collapsed to a constant (its
    # gradients gone), and layers whose weights grew count too.  A diverging one is
    # exploding's as well (both are labelled by the definitions; the cause, a learning
    # rate too high, is said in both, and each finding's first fix lowers it).
    collapsed = constant or beaten
    measured = _yardsticks(layers, rel, model_info, collapsed)
    harm = (constant or beaten, collapsed)
    affected = _depth_gaps(layers, measured, model_info, t, harm, stalled=no_better)
    if affected:
        depth = _through_depth(
            history, model_info, (layers, series, measured[0]), affected, (trend, share, None), t
        )
        return found + [depth]
    if found:
        return found
    if no_better or constant:
        stuck = _stuck(history, model_info, (layers, series), trend, t)
        if stuck:
            return stuck
    # A gradient that fades while the loss plateaus is convergence: here only a loss that
    # improved by less than ``stall`` over the whole run (or a constant output) counts.
    # A model trained as one: the definitions' line, a 100x fall (a 10x fall while the loss
    # sits near a constant's is common in runs that still learn slowly).
    line = {**t, "time_ratio": t["model_time_ratio"]}
    return _faded_over_time(
        history, model_info, (layers, series), trend, (no_better, collapsed), line
    )


def _yardsticks(
    layers: list, rel: list[float], model_info: ModelInfo, collapsed: bool = False
) -> tuple[list[float], list[float]]:
    """Each layer's relative gradient, and what it counts as when the layers before it are
    compared with it: a normalised layer's plain ratio when that is smaller.  The
    scale-invariant ratio credits it for weights that grew (a diverging run's grow 100x),
    which would make every layer before it look starved.  Once the model ends no better
    than a constant prediction (``collapsed``) the harm is shown and the plain ratios
    count throughout, as the definitions measure them."""
    plain = [over_run(relative_grad(layer, model_info, scale_invariant=False)) for layer in layers]
    if collapsed:
        return plain, plain
    return rel, [min(r, p) if math.isfinite(p) else r for r, p in zip(rel, plain, strict=True)]


def _depth_gaps(
    layers: list,
    measured: tuple[list[float], list[float]],
    model_info: ModelInfo,
    t: dict,
    harm: tuple[bool, bool],
    stalled: bool,
) -> list:
    """(layer, gap to the later layers, gap to the largest later layer) for every layer
    whose relative gradient (its median over the run) is below ``depth_ratio`` of the later
    layers' (their median; their largest but the output layer's when the loss ``stalled``;
    their largest when it has shown the harm: ``harm[0]``); recurrences are judged only
    when ``stalled``.  ``measured`` holds each layer's relative
    gradient and what it counts as when later layers are compared with it.

    Two gaps count only once the model ends no better than a constant prediction
    (``harm[1]``): a layer whose weights grew (a step too large blew them up, and the
    gradient that is left no longer moves them) and an exactly zero gradient behind ReLUs
    (dead units block it; ``dead_relu`` names them).  Otherwise they are an unstable run's
    (exploding's) or a few dead units' business, not a vanishing gradient's.
    """
    against_max, collapsed = harm
    rel, yardstick = measured
    affected = []
    blocked = blocked_paths_possible(model_info)
    roles = {layer.name: layer.role for layer in model_info.layers}
    for i, layer in enumerate(layers[:-1]):
        if roles.get(layer.name) in ("vanilla_rnn", "gated_rnn") and not stalled:
            # A recurrence's weights get the gradient summed over every time step; a gated
            # RNN that learned and then plateaued shows the same gap: unless the loss never
            # improved, recurrences are judged through time.
            continue
        if weights_grew(layer, t["grown_weights"]) and not collapsed:
            # |g|/|W| fell because |W| grew (an unstable learning rate), not because the
            # gradient faded: while the loss still beats a constant, exploding's to judge.
            continue
        later = [r for r in yardstick[i + 1 :] if math.isfinite(r) and r > 0]
        if not later or not math.isfinite(rel[i]) or (rel[i] == 0 and blocked and not collapsed):
            # Exactly zero behind ReLUs is a blocked path (dead units: dead_relu says so);
            # without them it is a gradient that shrank until it underflowed.
            continue
        # A stalled loss: against the largest later layer but the output layer (a fresh
        # head takes far more than any layer, healthy or not); a gradient that shrinks a
        # little at each of many layers stays within 100x of the typical later one.
        inner = [r for r in yardstick[i + 1 : -1] if math.isfinite(r) and r > 0]
        if against_max:
            base = max(later)
        elif stalled and inner:
            base = max(inner)
        else:
            base = statistics.median(later)
        ratio = rel[i] / base
        if ratio < t["depth_ratio"]:
            affected.append((layer, ratio, rel[i] / max(later)))
    return _with_starved_inputs(layers, rel, affected) if affected else []


def _gan_players(
    history: History,
    model_info: ModelInfo,
    layers: list,
    roles: dict[str, str],
    harm: tuple[LossTrend, float],
    t: dict,
) -> list[Finding]:
    """A GAN's players, each judged through depth by its own harm, and the generator's
    gradient fading over time.

    A GAN's losses are a game, not a descent: the logged loss is taken as the player's own
    when a player is watched alone or when both, in one model, are trained in turns (each
    player's steps carry its loss: :func:`judgement.turn_trend`), and as the generator's
    (how well it fools the discriminator) when both step together.  A player harmed is one
    whose loss improved by less than ``stall``; a discriminator with a loss of its own is
    also harmed when that loss ends worse than a guessing discriminator's
    (``guessing_discriminator``); one stepped with the generator, when it scores every
    sample alike (its output does not vary: it tells nothing apart).
    """
    trend, share = harm
    trends, harmed, lines = _player_harm(history, model_info, roles, trend, t)
    found: list[Finding] = []
    starved = _starved_generator(history, layers, roles, t) if harmed["generator"] else []
    for role in ("generator", "discriminator"):
        chain = [layer for layer in layers if roles.get(layer.name) == role]
        if len(chain) < 2 or not harmed[role]:
            continue
        series = [relative_grad(layer, model_info) for layer in chain]
        rel = [over_run(s) for s in series]
        measured = _yardsticks(chain, rel, model_info)
        affected = _depth_gaps(chain, measured, model_info, t, (True, False), stalled=True)
        if affected:
            found.append(
                _through_depth(
                    history, model_info, (chain, series, rel), affected,
                    (trends[role], share, True), lines[role],
                )
            )  # fmt: skip
    if found:
        return _unless_named(found, starved, roles)
    silent = _silent_generator(history, model_info, layers, roles, trends["generator"], t)
    if silent and not fitted(trends["generator"]):
        # No gradient at all: nothing was learned, whatever the loss did with the batches
        # (a loss resting at 0 fools the rival completely: nothing to learn).
        return silent
    # Over training: each harmed player's gradient.  A generator facing a confident
    # discriminator (the saturating loss starves it by ~10x: its own line); a
    # discriminator scoring every sample alike, judged as a model trained alone (the
    # definitions' 100x fall, its total gradient norm too: silent units leave only biases).
    lines["discriminator"] = {**lines["discriminator"], "time_ratio": t["model_time_ratio"]}
    for role in ("generator", "discriminator"):
        players = [layer for layer in layers if roles.get(layer.name) == role]
        if not players:
            continue  # watched apart: the other player is the other scope's
        series = [relative_grad(layer, model_info) for layer in players]
        found += _faded_over_time(
            history, model_info, (players, series), trends[role], (harmed[role], False),
            lines[role], as_one=role == "discriminator",
        )  # fmt: skip
    return _unless_named(found, starved, roles)


def _silent_generator(
    history: History,
    model_info: ModelInfo,
    layers: list,
    roles: dict[str, str],
    trend: LossTrend,
    t: dict,
) -> list[Finding]:
    """A generator none of whose layers got a usable gradient on any recorded step (below
    ``stuck_ratio`` of its weights, mostly exactly 0): its loss
    runs through a discriminator whose output sits at exactly 0 or 1, where a sigmoid's
    slope is 0 in float32 and binary cross-entropy clamps its log at -100 (a loss of 100
    per sample that never moves)."""
    generator = [layer for layer in layers if roles.get(layer.name) == "generator"]
    if not generator or not history.records:
        return []
    series = torch.stack([relative_grad(layer, model_info) for layer in generator])
    peak = float(torch.nan_to_num(series, nan=0.0).max())
    if peak >= t["stuck_ratio"]:
        return []
    zero_steps = int((torch.nan_to_num(series, nan=0.0) == 0).all(dim=0).sum())
    first = generator[0].name
    return [
        Finding(
            kind="vanishing_gradient",
            layer=first,
            severity="error",
            step=history.steps[0],
            message=(
                "No gradient reaches the generator: every one of its layers got at most "
                f"{fmt(peak)} of its weights on every recorded step (exactly 0 on "
                f"{zero_steps} of {series.shape[1]}), so it learned nothing (its loss, "
                f"{fmt(trend.first)} -> {fmt(trend.last)}, only followed the batches). "
                "Its loss runs "
                "through the discriminator, whose output must sit at exactly 0 or 1: a "
                "sigmoid that far out has a slope of 0 in float32, and binary cross-entropy "
                "clamps its log at -100 there. Give the discriminator a usual "
                "initialisation and learning rate, and compute its loss from logits "
                "(binary_cross_entropy_with_logits), which keeps a gradient."
            ),
            evidence={
                "layers": [layer.name for layer in generator],
                "over": "start",
                "relative_grad_peak": peak,
                "loss_first": trend.first,
                "loss_last": trend.last,
                **_gan_evidence(roles, first, t),
            },
        )
    ]


def _player_harm(
    history: History, model_info: ModelInfo, roles: dict[str, str], trend: LossTrend, t: dict
) -> tuple[dict[str, LossTrend], dict[str, bool], dict[str, dict]]:
    """Each player's loss trend, whether it is harmed, and the lines its findings are
    judged and worded by (see :func:`_gan_players`)."""
    window = int(t["window"])
    turns = {
        role: turn_trend(history, model_info, roles, role, window)
        for role in ("generator", "discriminator")
    }
    trends = {role: own or trend for role, own in turns.items()}
    alone = len(set(roles.values())) == 1
    own_loss = alone or turns["discriminator"] is not None

    def no_better(role: str) -> bool:
        return trends[role].known and trends[role].improvement < t["stall"]

    guessing = own_loss and trends["discriminator"].known and (
        trends["discriminator"].last > t["guessing_discriminator"]
    )
    # Watched alone with a loss gradscope reads (the two-term binary cross-entropy): no
    # better than scoring every sample alike (2 ln 2), the definitions' line for it.
    beaten = alone and no_better_than_constant(history, trends["discriminator"], t)
    harmed = {
        "generator": no_better("generator") and (not alone or "generator" in roles.values()),
        # Without a loss of its own (stepped with the generator, only the generator's loss
        # logged), a discriminator scoring every sample alike tells nothing apart: the
        # generator's loss says nothing about it either way.
        "discriminator": (no_better("discriminator") or guessing or beaten)
        if own_loss
        else output_share(history, window) < t["constant_output"],
    }
    # Its findings say how it is harmed: its loss ends worse than a guess's, not stalled.
    lines = {
        "generator": t,
        "discriminator": {**t, "worse_than_guessing": guessing and not no_better("discriminator")},
    }
    return trends, harmed, lines


def _unless_named(found: list[Finding], starved: list[Finding], roles: dict) -> list[Finding]:
    """``found``, plus the starved-generator finding when no other names the generator."""
    if any(roles.get(f.layer) == "generator" for f in found):
        return found
    return found + starved


def _starved_generator(
    history: History, layers: list, roles: dict[str, str], t: dict
) -> list[Finding]:
    """A generator whose saturating loss (``fake_score``, gradscope/gan_loss.py) shows the
    discriminator rejecting its samples through the run's second half."""
    generator = [layer for layer in layers if roles.get(layer.name) == "generator"]
    series = history.act_series("fake_score")
    scores = [
        float(v) for row in series[series.shape[0] // 2 :] for v in row if not math.isnan(v)
    ]
    if not generator or len(scores) < 3:
        return []
    score = statistics.median(scores)
    if not score <= t["starved_score"]:
        return []
    first = generator[0].name
    return [
        Finding(
            kind="vanishing_gradient",
            layer=first,
            severity="warning",
            step=history.steps[len(history.steps) // 2],
            message=(
                "The generator is starved: its loss is the saturating log(1 - D(G(z))), and "
                f"the discriminator scores its samples at D(G(z)) = {fmt(score)} (median over "
                "the second half of the run), so it gets about that share of the gradient "
                "the non-saturating loss would give, from its first layer "
                f"({first}) on, and cannot improve. Train it to maximise log D(G(z)) "
                "instead (binary cross-entropy against the 'real' label), as Goodfellow "
                "et al. (2014) recommend."
            ),
            evidence={
                "layers": [layer.name for layer in generator],
                "fake_score": score,
                "threshold_starved_score": t["starved_score"],
                "over": "loss",
                **_gan_evidence(roles, first, t),
            },
        )
    ]


def _with_starved_inputs(layers: list, rel: list[float], affected: list) -> list:
    """Add the layers before the first affected one that get no more gradient than it does:
    where the gradient has already faded to its floor, the layers all look alike and none
    is far below its successors, yet the input-most is where learning stops."""
    names = [layer.name for layer in layers]
    first = names.index(affected[0][0].name)
    floor = rel[first]
    earlier = [
        (layers[k], affected[0][1], affected[0][2])
        for k in range(first)
        if math.isfinite(rel[k]) and rel[k] <= 10 * floor
    ]
    # Only a contiguous run that reaches back from the first affected layer.
    run: list = []
    for item in reversed(earlier):
        k = names.index(item[0].name)
        if k != first - 1 - len(run):
            break
        run.insert(0, item)
    return run + affected


def _through_depth(
    history: History,
    model_info: ModelInfo,
    measured: tuple[list, list[torch.Tensor], list[float]],
    affected: list,
    harm: tuple[LossTrend, float, bool | None],
    t: dict,
) -> Finding:
    """The finding for layers whose relative gradient is far below a later layer's
    (``harm``: the loss trend, the output's share that varies between samples, and whether
    the caller already knows the layers' part stalled)."""
    layers, series, rel = measured
    trend, share, known_stall = harm
    constant = predicts_a_constant(history, trend, t)[0]
    stalled = (
        known_stall
        if known_stall is not None
        else loss_shows_harm(history, trend, t) or constant
    )
    worst_layer, worst_ratio, _ = min(affected, key=lambda item: item[1])
    extreme = min(item[2] for item in affected)
    first_layer = affected[0][0]
    names = [layer.name for layer, _, _ in affected]
    first_index = [layer.name for layer in layers].index(first_layer.name)
    step = _first_step_below(history, series[first_index], series, t["depth_ratio"])
    grown = {
        layer.name: weight_growth(layer)
        for layer, _, _ in affected
        if weights_blew_up(layer, model_info, t["grown_weights"])
    }
    position = {layer.name: k for k, layer in enumerate(layers)}
    blocked: list[str] = []
    if blocked_paths_possible(model_info):  # exactly 0 behind ReLUs: dead units block it
        blocked = [layer.name for layer, _, _ in affected if rel[position[layer.name]] == 0]
    copies = _copied(history, model_info, names, t["copy_lines"])
    cause = _tiny_gains_text(history, model_info) or _cause(model_info, grown, blocked, copies)
    harm = (
        _constant_text(share, trend)
        if constant
        else _harm_text(history, trend, t)
        if stalled
        else _no_harm_text(trend)
    )
    message = (
        f"Gradients vanish toward the input: {len(names)} of {len(layers)} layers get less "
        f"than {fmt(t['depth_ratio'])} of the gradient (relative to their weights) that later "
        f"layers get; {worst_layer.name} gets {fmt(worst_ratio)} of it. "
        f"{_effect_text(stalled)}{cause}{harm}"
    )
    return Finding(
        kind="vanishing_gradient",
        layer=first_layer.name,
        severity=_depth_severity(history, trend, stalled, extreme, t),
        step=step,
        message=message,
        evidence={
            "layers": names,
            "worst_layer": worst_layer.name,
            "ratio_to_later_layers": worst_ratio,
            "relative_grad": {layer.name: r for layer, r in zip(layers, rel, strict=True)},
            "largest_relative_grad": max((r for r in rel if math.isfinite(r)), default=math.nan),
            "loss_first": trend.first,
            "loss_last": trend.last,
            "loss_improvement": trend.improvement,
            "stalled": stalled,
            "output_share": share,
            "loss_vs_constant": loss_vs_constant(history, trend),
            "threshold_depth_ratio": t["depth_ratio"],
            "init_scale": {layer.name: init_scale(layer, model_info) for layer in layers},
            "weights_grew": grown,
            "no_gradient_layers": blocked,
            **_ranking_evidence(history, model_info, layers, copies),
            "over": "depth",
        },
    )


def _ranking_evidence(
    history: History, model_info: ModelInfo, layers: list, copies: list[str]
) -> dict[str, Any]:
    """What ranks a depth finding's fixes (see :func:`plan`): the loss multiplier (lower_lr,
    first when the weights grew or units died, counts it under SGD, as the exploding
    finding's does), a recurrence written as a loop (its layers called once per time
    step), the data's size at the first layer, and affected layers whose weight rows are
    identical copies (``copies``: a random initialisation comes first)."""
    return {
        "norm_gains": norm_gains(history, model_info),
        "symmetric_layers": copies,
        "loss_multiplier": loss_multiplier(history),
        "looped_layers": looped_layers(history, [layer.name for layer in layers]),
        **data_evidence(history, model_info),
    }


def _copied(
    history: History, model_info: ModelInfo, names: list[str], lines: dict
) -> list[str]:
    """The layers of ``names`` whose weight rows are still identical copies (by the
    symmetric weights detector's ``lines``: :func:`judgement.copy_lines`)."""
    copied = {rows[0] for rows in identical_rows(history, model_info, lines).values()}
    return [name for name in names if name in copied]


def _cause(
    model_info: ModelInfo, grown: dict[str, float], blocked: list[str], copies: list[str]
) -> str:
    """Why the gradient is missing: weights a large step blew up, units that pass nothing
    back, layers whose units are copies of each other, or activations that shrink it layer
    by layer."""
    gates = model_info.gate_layers()  # a squeeze-excitation sigmoid is a gate, not a layer
    activations = sorted(
        {
            layer.role
            for layer in model_info.layers
            if layer.role in ("sigmoid", "tanh") and layer.name not in gates
        }
    )
    if copies:
        return (
            f"The weight rows of {', '.join(copies[:3])} are identical copies (see "
            "symmetric_weights): every unit of such a layer computes the same thing, so the "
            "layer acts as one unit and passes back one direction of gradient; a random "
            "initialisation fixes both."
        )
    if grown:
        name, factor = max(grown.items(), key=lambda item: item[1])
        return (
            f"The weights of {name} grew {times(factor)} during training (steps too large for "
            "them: a learning rate too high), and the gradient that reaches them is now far "
            "too small to move weights that size."
        )
    if blocked:
        return (
            f"{', '.join(blocked[:3])} get no gradient at all: the ReLU units after them "
            "output zero for every input (see dead_relu), so nothing flows back."
        )
    if activations:
        return (
            f"Each {'/'.join(activations)} layer can only shrink the gradient on its way back "
            "(their slope is at most 0.25 for sigmoid and 1 for tanh), so it fades layer by "
            "layer."
        )
    return "The gradient shrinks at each layer on its way back to the input."


def _tiny_gains_text(history: History, model_info: ModelInfo) -> str:
    """The cause when normalisation layers start with tiny gains (empty when none do)."""
    tiny = fix.tiny_gains(norm_gains(history, model_info))
    if not tiny:
        return ""
    rms = statistics.median(tiny.values())
    return (
        f"{len(tiny)} normalisation layers ({', '.join(list(tiny)[:3])}"
        f"{' and more' if len(tiny) > 3 else ''}) start with gains (their weight) of RMS "
        f"about {fmt(rms)} instead of 1: each scales its output, and the gradient back "
        "through it, down by that much, so the gradient shrinks at every one of them. "
    )


def _depth_severity(
    history: History, trend: LossTrend, stalled: bool, extreme: float, t: dict
) -> str:
    """Layers that do not learn while the loss stalls: the training is broken (an error).
    A gap of ``depth_severe`` to the largest later layer is a warning even before a stall
    can be seen (a short diagnose() run): those layers receive nothing to learn from.  Not
    in a run cut short by a NaN/Inf: a gap on its few finite records is the blow-up's."""
    if stalled:
        return "error"
    early = not _harm_judged(trend) and first_nonfinite_step(history) is None
    return "warning" if extreme < t["depth_severe"] and early else "info"


def _no_harm_text(trend: LossTrend) -> str:
    """What the loss says when it shows no harm: that it still falls, or that too few
    losses were logged to tell."""
    if _harm_judged(trend):
        return (
            f" The loss still falls ({fmt(trend.first)} -> {fmt(trend.last)}), so this does "
            "not stop training yet."
        )
    n = trend.logged
    logged = f"{n} loss{'es' if n != 1 else ''}" if n else "No loss"
    return (
        f" {logged} logged: too few to tell whether this stops training (judged from "
        f"{MIN_LOSSES_FOR_A_STALL} on)."
    )


def _harm_judged(trend: LossTrend) -> bool:
    """Whether enough losses were logged for the loss to show harm (its absence then says
    the gap does not hurt)."""
    return trend.known and trend.logged >= MIN_LOSSES_FOR_A_STALL


def _constant_text(share: float, trend: LossTrend) -> str:
    """The harm, said for a model whose output no longer depends on its input."""
    moved = (
        "fell only as far as a constant prediction gets"
        if trend.last <= trend.first
        else "rose instead of falling"
    )
    return (
        f" The model predicts nearly the same output for every input (only {share:.1%} of "
        f"its output varies between samples), so its loss "
        f"({fmt(trend.first)} -> {fmt(trend.last)}) {moved}: it learned the output's "
        "offset, not the task."
    )


def _severity(stalled: bool, severe: bool) -> str:
    """Harm sets the severity: a stalled loss makes it a warning (an error when the gap is
    extreme); without harm it is ``info``, however large the gap."""
    if stalled:
        return "error" if severe else "warning"
    return "info"


def _first_step_below(
    history: History, series: torch.Tensor, stacked: list[torch.Tensor], threshold: float
) -> int:
    """The first recorded step at which ``series`` fell below ``threshold`` of the largest."""

    def holds(k: int) -> bool:
        values = [float(s[k]) for s in stacked if math.isfinite(float(s[k]))]
        here = float(series[k])
        return bool(values) and math.isfinite(here) and here < threshold * max(values)

    return first_step_where(history, holds)


def _stuck(
    history: History,
    model_info: ModelInfo,
    signals: tuple[list, list[torch.Tensor]],
    trend: LossTrend,
    t: dict,
) -> list[Finding]:
    """...or every layer's gradient was too small from the start: its relative gradient
    below ``stuck_ratio`` on every recorded step, in every layer (none fell: none was ever
    larger), while the loss shows harm.  A gradient of exactly 0 is dead units or a cut
    graph, the other detectors' to name.  An error where sigmoid/tanh layers squash it
    (the literature's vanishing); without them (a tiny initialisation of a ReLU-family
    net) the definitions' criteria do not hold and it is ``info`` (docs/definitions.md)."""
    layers, series = signals
    peaks = [float(torch.nan_to_num(s, nan=0.0).max()) for s in series]
    if not peaks or min(peaks) <= 0 or max(peaks) >= t["stuck_ratio"]:
        return []
    top = max(range(len(peaks)), key=peaks.__getitem__)
    squashed = bool(model_info.roles() & {"sigmoid", "tanh"})
    return [
        Finding(
            kind="vanishing_gradient",
            layer=layers[0].name,
            severity="error" if squashed else "info",
            step=history.steps[0],
            message=(
                f"The gradient is too small to train any layer: in every layer it stayed "
                f"below {fmt(t['stuck_ratio'])} of the weights from the first step on "
                f"(largest {fmt(peaks[top])}, in {layers[top].name}), so a step of any usual "
                "learning rate moves no weight, and nothing was learned:"
                f"{stall_text(history, trend, t)} The gradient vanished before training "
                + (
                    "began: saturated sigmoid/tanh layers or an output that is the same for "
                    "every input pass almost nothing back."
                    if squashed
                    else "began, with no sigmoid/tanh to squash it: weights initialised far "
                    "below Kaiming's or Xavier's scale pass almost nothing back (info: no "
                    "gap through depth or time and no fall, so not vanishing as "
                    "docs/definitions.md defines it)."
                )
            ),
            evidence={
                "layers": [layer.name for layer in layers],
                "relative_grad_peak": peaks[top],
                "loss_first": trend.first,
                "loss_last": trend.last,
                "threshold_stuck_ratio": t["stuck_ratio"],
                "over": "start",
            },
        )
    ]


def _faded_over_time(
    history: History,
    model_info: ModelInfo,
    signals: tuple[list, list[torch.Tensor]],
    trend: Any,
    harm: tuple[bool, bool],
    t: dict,
    *,
    as_one: bool = True,
) -> list[Finding]:
    """...while the loss got no better: the gradient faded over time, not over depth.

    A gradient that shrinks while the loss falls is convergence; one that shrinks while
    the loss stalls or rises is a layer that stopped learning (a GAN generator facing a
    confident discriminator with the saturating loss, a saturating activation).  Judged
    per layer (its relative gradient) and, for a model trained as one (``as_one``; a GAN
    generator's gradient follows its rival), as docs/definitions.md measures it: the total
    gradient norm, the last ``window`` records against the first three.  A layer counts
    only when that total (the model's, or the player's) fell below 10x the definitions'
    line too, and layers whose weights grew only once the model collapsed (``harm[1]``):
    otherwise |g|/|W| fell because |W| moved, the exploding detector's to report.
    """
    window = int(t["window"])
    if not harm[0] or len(history) < 2 * window:
        return []
    faded = _faded(signals, harm[1], t, as_one)
    if not faded:
        return []
    roles = gan_roles(history, model_info)
    layer, ratio, values = faded[0]
    silent = [f.name for f, r, _ in faded if r == 0]
    gone = (
        f" It now gets no gradient at all (exactly 0 in {', '.join(silent[:3])}"
        f"{' and more' if len(silent) > 3 else ''}): the units after it output a constant "
        "for every input, typically after steps too large pushed them there."
        if silent
        else ""
    )
    return [
        Finding(
            kind="vanishing_gradient",
            layer=layer.name,
            severity="warning",
            step=first_step_where(
                history,
                under(values, t["time_ratio"] * _start(values, window)),
                default="last",
            ),
            message=(
                f"The gradient of {_whose(layer.name, values, series=signals[1])} faded to "
                + ("nothing (exactly 0) from its size" if ratio == 0 else f"{fmt(ratio)} of its")
                + ("" if ratio == 0 else " size")
                + " at the start of training while the model learned nothing:"
                f"{_harm_text(history, trend, t)} The layer has stopped learning, not "
                "converged. Something downstream stopped passing gradient back: a saturated "
                "output (sigmoid near 0 or 1), or a loss that flattens where the model now "
                "is (the saturating GAN generator loss log(1 - D(G(z))) once the "
                f"discriminator wins).{gone}"
            ),
            evidence={
                "layers": [f.name for f, _, _ in faded],
                "ratio_to_start": ratio,
                "relative_grad_start": _start(values, window),
                "relative_grad_now": recent(values, window),
                "loss_first": trend.first,
                "loss_last": trend.last,
                "loss_improvement": trend.improvement,
                "threshold_time_ratio": t["time_ratio"],
                "no_gradient_layers": silent,
                "loss_multiplier": loss_multiplier(history),
                "over": "time",
                **_gan_evidence(roles, layer.name, t),
            },
        )
    ]


def _whose(name: str, values: torch.Tensor, series: list[torch.Tensor]) -> str:
    """The layer whose gradient ``values`` are, or the whole model when they are the total
    norm (see :func:`_faded`)."""
    if any(values is own for own in series):
        return name
    return f"the model (all layers together, from {name} on)"


def _faded(
    signals: tuple[list, list[torch.Tensor]], collapsed: bool, t: dict, as_one: bool
) -> list[tuple[Any, float, torch.Tensor]]:
    """(layer, now over start, series) of the layers whose gradient faded below
    ``time_ratio`` of its start; else, for a model trained as one, the first layer when
    the total gradient norm did (its series then the total's)."""
    layers, series = signals
    window = int(t["window"])
    grown = [weights_grew(layer, t["grown_weights"]) for layer in layers]
    total = total_grad_norm(layers)
    start, now = _start(total, 3), recent(total, window)
    total_drop = now / start if start > 0 else math.nan
    if not total_drop < 10 * t["model_time_ratio"]:
        # The model's (or player's) gradient as a whole did not fall even to 10x the
        # definitions' line: a layer's |g|/|W| that fell is weights that moved.
        return []
    faded = []
    for layer, values, grew in zip(layers, series, grown, strict=True):
        start, now = _start(values, window), recent(values, window)
        # Exactly 0 now counts: every unit after the layer went silent (a blow-up that
        # pushed ReLU/GELU inputs far negative leaves no gradient at all).  Weights that
        # grew explain a smaller |g|/|W|, never a gradient of exactly 0.
        if grew and not collapsed and now != 0:
            continue
        measured = math.isfinite(now) and math.isfinite(start) and start > 0 and now >= 0
        if measured and now / start < t["time_ratio"]:
            faded.append((layer, now / start, values))
    if as_one and not faded and (collapsed or not any(grown)) and total_drop < t["time_ratio"]:
        faded.append((layers[0], total_drop, total))
    return faded


def _start(values: torch.Tensor, window: int) -> float:
    """A gradient's size at the start: the median of its first ``window`` records, or, when
    that is already exactly 0, the first nonzero one among them (a gradient that went
    silent after the first step, when a rival's units died at once, faded from that)."""
    start = early(values, window)
    if start == 0:
        head = values[:window]
        nonzero = head[torch.isfinite(head) & (head > 0)]
        return float(nonzero[0]) if nonzero.numel() else 0.0
    return start


def _gan_evidence(roles: dict[str, str], layer: str, t: dict) -> dict[str, Any]:
    """For a GAN's generator: its role and the module names of both parts (for the fix);
    for a discriminator whose loss ends worse than a guessing one's: that, and the line."""
    if t.get("worse_than_guessing") and roles.get(layer) == "discriminator":
        return {"gan_role": "discriminator", "guessing_loss_line": t["guessing_discriminator"]}
    if roles.get(layer) != "generator":
        return {}
    tops = {role: name.split(".")[0] for name, role in reversed(list(roles.items()))}
    seen = {"saturating_loss_seen": t.get("saturating_loss_seen", True)}
    if "discriminator" not in tops:
        # Watched apart: the discriminator is another model of the user's loop.
        return {"gan_role": "generator", "other_model": "discriminator", **seen}
    return {
        "gan_role": "generator",
        "part": tops["generator"],
        "other_part": tops["discriminator"],
        **seen,
    }


def _through_time(
    history: History,
    model_info: ModelInfo,
    trend: LossTrend,
    stalled: bool,
    t: dict,
    share: float | None,
) -> list[Finding]:
    """A recurrence whose first time step gets almost none of the gradient its last gets
    (``share``: what of the output varies between samples, when the model predicts a
    constant)."""
    found = []
    looped = looped_layers(history, list(history.module_names))
    signals = {s.name: s for s in depth_layers(history, model_info)}
    below = {n: r for n, r in through_time_ratios(history).items() if r < t["through_time"]}
    calls = dict(zip(history.module_names, history.calls_total, strict=True))
    for name, (ratio, mates) in _one_per_loop(below, looped, calls).items():
        layer = model_info.layer(name)
        steps = model_info.sequence_length(name) if layer is not None else None
        over = f"{steps} time steps" if steps else "its time steps"
        signal = signals.get(name)
        blown = signal is not None and weights_blew_up(signal, model_info, t["grown_weights"])
        grown = {name: weight_growth(signal)} if blown else {}
        blew = (
            f" The weights of {name} grew {times(grown[name])} during training (steps too "
            "large for them), which pinned its units at their asymptotes: the gradient that "
            "exploded through time at first now fades."
            if blown
            else ""
        )
        found.append(
            Finding(
                kind="vanishing_gradient",
                layer=name,
                # The loop's smallest ratio: it speaks for the layers it names.
                severity=_severity(
                    stalled, min([ratio] + [below[m] for m in mates]) < t["severe_ratio"]
                ),
                step=history.steps[0],
                message=(
                    f"The gradient vanishes through time in {name}"
                    + (f" (and in {', '.join(mates)}, run in the same loop)" if mates else "")
                    + f": what reaches its first time step is {fmt(ratio)} of what reaches "
                    f"its last, over {over}. "
                    "Backpropagation through time multiplies the gradient by the recurrent "
                    "matrix and the activation's slope once per step, so the early inputs "
                    "barely influence the weights: the network cannot learn long-range "
                    "dependencies"
                    + (
                        "." + _constant_text(share, trend)
                        if share is not None
                        else "." + stall_text(history, trend, t)
                        if stalled
                        else "; the loss still falls, so the task may not need them."
                    )
                    + blew
                ),
                evidence={
                    "through_time_ratio": ratio,
                    "weights_grew": grown,
                    "init_scale": {name: init_scale(signal, model_info)} if signal else {},
                    "sequence_length": steps,
                    "loss_first": trend.first,
                    "loss_last": trend.last,
                    "loss_improvement": trend.improvement,
                    "stalled": stalled,
                    "output_share": share,
                    "loss_vs_constant": loss_vs_constant(history, trend),
                    "threshold_through_time": t["through_time"],
                    # A recurrence written as a loop: its cell's layers run once per step.
                    "looped_layers": looped,
                    # The loop's other layers the gradient vanishes in, not reported apart.
                    "same_loop": mates,
                    "over": "time steps",
                },
            )
        )
    return found


def _one_per_loop(
    ratios: dict[str, float], looped: list[str], calls: dict[str, int]
) -> dict[str, tuple[float, list[str]]]:
    """Layer -> (its through-time ratio, the other layers of its loop): one entry per
    recurrence.  The layers of a cell written as a Python loop (in ``looped``, called as
    often as each other: once per time step, wrapped in a Sequential or not) are one
    recurrence: the first of them in module order speaks for the rest, which the same
    gradient passes through."""
    out: dict[str, tuple[float, list[str]]] = {}
    speaker: dict[int, str] = {}
    for name, ratio in ratios.items():
        if name not in looped:
            out[name] = (ratio, [])
            continue
        first = speaker.setdefault(calls.get(name, 0), name)
        if first == name:
            out[name] = (ratio, [])
        else:
            out[first][1].append(name)
    return out


def _harm_text(history: History, trend: LossTrend, t: dict) -> str:
    """The sentence that shows the harm: a discriminator's loss that ends worse than a
    guessing discriminator's (see :func:`_gan_players`), else :func:`stall_text`'s."""
    if not t.get("worse_than_guessing"):
        return stall_text(history, trend, t)
    return (
        f" The discriminator's loss fell ({fmt(trend.first)} -> {fmt(trend.last)}) but ends "
        f"above {fmt(t['guessing_discriminator'])}, worse than a discriminator that scores "
        "every sample alike (2 ln 2 = 1.39 with binary cross-entropy, 2 with the hinge loss): "
        "it tells real from fake worse than a guess."
    )


def _effect_text(stalled: bool) -> str:
    """What starved layers mean for training: nothing learned there, or slow learning."""
    if stalled:
        return "These layers barely change, so the network cannot learn features in them. "
    return "These layers change slowly next to the later ones. "


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Fixes for a vanishing gradient, best first, chosen by its evidence; layers whose
    units are copies of each other get a random initialisation first."""
    builders = _plan(finding, info)
    if finding.evidence.get("symmetric_layers"):
        return [fix.random_init] + [b for b in builders if b is not fix.random_init]
    return builders


def _plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    roles = info.roles()
    if fix.tiny_norm_gains(finding):
        # Normalisation layers that scale everything down: their gains, not the weights.
        return [fix.reset_norm_gains, fix.kaiming_init, fix.lower_lr]
    if finding.evidence.get("weights_grew"):
        layer = info.layer(finding.layer)
        recurrent = layer is not None and layer.role in ("vanilla_rnn", "gated_rnn")
        if recurrent and fix.started_too_large(finding):
            # A recurrence started too large: its gradient exploded through time and the
            # steps it drove blew the weights up.  Make it norm-preserving.
            return [fix.orthogonal_init, fix.clip_grad_norm, fix.lower_lr]
        # A step too large blew the weights up: the learning rate is the cause.
        return [fix.lower_lr, fix.clip_grad_norm, fix.add_batchnorm]
    if finding.evidence.get("gan_role") == "generator":
        if finding.evidence.get("saturating_loss_seen", True):
            return [fix.use_nonsaturating_loss, fix.lower_lr, fix.add_batchnorm]
        # Already the non-saturating loss: a rival pushed to its asymptotes by a step or
        # an initialisation too large (from the first step on: the initialisation).
        if finding.evidence.get("over") == "start":
            return [fix.kaiming_init, fix.add_batchnorm, fix.lower_lr]
        return [fix.lower_lr, fix.kaiming_init, fix.add_batchnorm]
    line = finding.evidence.get("guessing_loss_line")
    if line and finding.evidence.get("loss_first", 0.0) > ABSURD_START * line:
        # Worse than a guess from an absurd first loss: the initialisation's scale.
        return [fix.kaiming_init, fix.lower_lr, fix.add_batchnorm]
    if finding.evidence.get("no_gradient_layers"):
        # Dead units after them block the gradient: what killed the units is the cause.
        return [fix.lower_lr, fix.kaiming_init, fix.add_batchnorm]
    if "vanilla_rnn" in roles:
        return [fix.use_lstm_or_gru, fix.orthogonal_init, fix.clip_grad_norm]
    layer = info.layer(finding.layer)
    if layer is not None and layer.role == "gated_rnn":
        # Through time in an LSTM/GRU: norm-preserving recurrent weights, not a ReLU init.
        return [fix.orthogonal_init, fix.clip_grad_norm, fix.lower_lr]
    if info.hidden_roles() & {"sigmoid", "tanh"}:
        # Hidden sigmoid/tanh layers squash the gradient (an output's sigmoid does not
        # stand between the layers, and use_relu leaves it in place).
        if fix.looped(finding):
            # A recurrence written as a loop: ReLU is unbounded there and grows the hidden
            # state at every time step; a norm re-centres the cell's input each step.
            return [fix.add_batchnorm, fix.xavier_init, fix.use_relu]
        if fix.inputs_unscaled(finding):
            # Unscaled data through ReLU layers reaches the output unbounded; BatchNorm
            # rescales the first layer's output whatever the data's size.
            return [fix.add_batchnorm, fix.normalize_inputs, fix.xavier_init]
        tiny = [v for v in fix.scales(finding) if v < 0.1]
        if tiny and "tanh" in roles:
            return [fix.xavier_init, fix.use_relu, fix.add_batchnorm]
        return [fix.use_relu, fix.kaiming_init, fix.add_batchnorm]
    if finding.evidence.get("over") == "start":
        # Too small from the first step with nothing to squash it: the weights' scale.
        return [fix.kaiming_init, fix.add_batchnorm, fix.add_residual]
    return [fix.add_batchnorm, fix.kaiming_init, fix.add_residual]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``vanishing_gradient`` findings, best first (see :func:`plan`)."""
    suggestions = fix.suggest(finding, model_info, "vanishing_gradient", plan)
    return fix.explain_first(suggestions, "add_batchnorm", _first_reason(finding, model_info))


def _first_reason(finding: Finding, info: ModelInfo) -> str:
    """What evidence put BatchNorm first for a sigmoid/tanh model (see :func:`plan`)."""
    if not info.hidden_roles() & {"sigmoid", "tanh"}:
        return ""
    if fix.looped(finding):
        return fix.loop_reason(fix.looped(finding))
    if fix.inputs_unscaled(finding):
        where = finding.evidence.get("data_layer") or "the first layer"
        return (
            f"First because the data reaches {where} with a root mean square of "
            f"{fmt(finding.evidence.get('data_rms'))} (standardised data has about 1): ReLU, "
            "the usual fix for sigmoid/tanh, would carry it to the output unscaled; BatchNorm "
            "rescales the first layer's output whatever the data's size (standardising the "
            "data, next, removes the cause). "
        )
    return ""

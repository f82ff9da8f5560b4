"""The independent oracle: re-run a scenario with plain torch and label it.

This module must not import gradscope (``tests/test_generated_slice.py`` checks it in a
subprocess).  It trains the scenario exactly as ``space.Scenario.train_step`` does, with
plain forward hooks, tensor hooks and optimizer step hooks, measures the quantities of
``docs/definitions.md`` and turns them into a :class:`Label`.  The bounds are constants
below; their justification is in docs/definitions.md.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradscope_scenarios.generated.space import GANS, RECURRENT, Config, build, layer_name

KINDS = (
    "vanishing_gradient",
    "exploding_gradient",
    "nonfinite_gradient",
    "dead_relu",
    "saturated_activation",
    "no_gradient",
    "symmetric_weights",
)

# -- bounds (docs/definitions.md says why) ----------------------------------------------------
ATTENUATION = 1e-2  # vanishing: a layer gets < 1% of the relative gradient of a later layer
TIME_ATTENUATION = 1e-2  # vanishing through time: |dL/dh_1| < 1% of |dL/dh_T|
TEMPORAL_DROP = 1e-2  # vanishing over training: a part's gradient falls 100x while it stalls
GROWTH = 1e3  # exploding: 1000x growth through depth, time, or training steps
GROWTH_STEPS = 2  # ... on at least this many steps
UPDATE_RATIO = 1.0  # exploding: a step larger than the weight itself ...
UPDATE_STEPS = 3  # ... on at least this many steps
LOSS_CLIMB = 10.0  # exploding: the loss ends 10x above where it started
WORSE = 2.0  # exploding: gradients GROWTH x the weights and the loss ends 2x a constant's
ABSURD_PLAYER_LOSS = 4.0  # ... or, for a GAN player, its loss ends above this
DEAD = 0.5  # dead_relu: half a layer's units silent on every input of the last 5 steps
SATURATED = 0.5  # saturated_activation: half of the outputs within 1% of an asymptote
SEVERE = 0.8  # dead/saturated count without a stalled loss from this fraction on
SYMMETRIC = 0.5  # symmetric_weights: half of the rows identical to another row
LEARNED = 0.9  # a part learned if its loss ends 10% below min(start, best constant)
WINDOW = 5  # steps at the end over which units must stay silent


@dataclass
class Label:
    """The oracle's verdict on one run.

    ``kinds`` maps each finding kind present to the layers (module names) where it is;
    ``allow`` holds kinds that are not wrong to report (consequences, borderline cases);
    ``culprit`` is the first module whose output turned non-finite, when there is one.
    """

    kinds: dict[str, list[str]] = field(default_factory=dict)
    allow: set[str] = field(default_factory=set)
    culprit: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """No finding kind present."""
        return not self.kinds

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "kinds": {k: list(v) for k, v in sorted(self.kinds.items())},
            "allow": sorted(self.allow - set(self.kinds)),
            "culprit": self.culprit,
            "numbers": self.numbers,
        }


def _med(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def _default_norm(p: torch.Tensor) -> float:
    """Norm of a PyTorch-default-initialised tensor of p's shape (U(+-1/sqrt(fan_in)))."""
    fan_in = p[0].numel() if p.dim() > 1 else p.numel()
    return math.sqrt(p.numel() / (3.0 * max(fan_in, 1)))


class _Run:
    """Hooks on one built scenario and the per-step measurements they collect."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sc = build(config)
        self.modules: dict[str, nn.Module] = {}
        self.part_of: dict[str, str] = {}
        for part, model in self.sc.parts.items():
            for name, module in model.named_modules():
                full = layer_name(part, name)
                if full:
                    self.modules[full] = module
                    self.part_of[full] = part
        self.layers: dict[str, list[nn.Parameter]] = {}
        self.param_layer: dict[int, tuple[str, str]] = {}
        for full, module in self.modules.items():
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            weights = [p for _, p in own if p.dim() >= 2]
            if weights:
                self.layers[full] = weights
            for n, p in own:
                self.param_layer[id(p)] = (full, f"{full}.{n}")
        self.floor = {
            n: math.sqrt(sum(_default_norm(p) ** 2 for p in ws)) for n, ws in self.layers.items()
        }
        self.order: list[str] = []
        self.steps: list[dict[str, Any]] = []
        self.cur: dict[str, Any] = {}
        self.present: dict[str, bool] = {}
        self.nonzero: dict[str, bool] = {}
        self.output_acts = {"out_act"}
        self._handles: list[Any] = []
        self._attach()

    # -- hooks ---------------------------------------------------------------------------
    def _attach(self) -> None:
        for full, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(full, module)))
        if self.config.family in RECURRENT:
            embed = self.modules["features.embed"]
            self._handles.append(embed.register_forward_hook(self._time_hook))
        for part, opt in self.sc.optimizers.items():
            self._handles.append(opt.register_step_pre_hook(self._pre_hook(part)))
            self._handles.append(opt.register_step_post_hook(self._post_hook(part)))

    def _applied_after(self, full: str, module: nn.Module) -> str | None:
        """The activation a Transformer layer's feed-forward applies to ``linear1``'s
        output as a function (not a module: no hook sees it), as the scenario built it."""
        act = self.config.activation
        ffn = self.config.family.startswith("transformer") and full.endswith(".linear1")
        if ffn and isinstance(module, nn.Linear) and act in ("relu", "tanh", "sigmoid"):
            return act
        return None

    def _forward_hook(self, full: str, module: nn.Module) -> Any:
        applied = self._applied_after(full, module)
        relu = (
            isinstance(module, nn.ReLU)
            or (isinstance(module, nn.RNN) and module.nonlinearity == "relu")
            or applied == "relu"
        )
        squash = (
            isinstance(module, (nn.Sigmoid, nn.Tanh, nn.GRU, nn.LSTM))
            or (isinstance(module, nn.RNN) and module.nonlinearity == "tanh")
            or applied in ("tanh", "sigmoid")
        )
        sigmoid = isinstance(module, nn.Sigmoid) or applied == "sigmoid"
        function = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}.get(applied or "")

        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            if full in self.layers and full not in self.order:
                self.order.append(full)
            y = out[0] if isinstance(out, tuple) else out
            if not isinstance(y, torch.Tensor):
                return
            y = y.detach().float()
            if not bool(torch.isfinite(y).all()):
                self.cur.setdefault("bad_outputs", []).append(full)
                return
            if relu:
                if y.dim() == 4:
                    active = (y > 0).transpose(0, 1).reshape(y.shape[1], -1).any(1)
                else:
                    active = (y > 0).reshape(-1, y.shape[-1]).any(0)
                prev = self.cur.setdefault("active", {}).get(full)
                self.cur["active"][full] = active if prev is None else prev | active
            if squash:
                if function is not None:  # the function's output, not linear1's
                    y = function(y)
                near = (y - 0.5).abs() > 0.49 if sigmoid else y.abs() > 0.99
                self.cur.setdefault("sat", {}).setdefault(full, []).append(
                    float(near.float().mean())
                )

        return hook

    def _time_hook(self, mod: nn.Module, args: Any, out: torch.Tensor) -> Any:
        if not torch.is_grad_enabled():
            return None
        replaced = None
        if not out.requires_grad:
            # A frozen embedding: its output is a constant of the graph, so a leaf copy that
            # asks for a gradient measures the same thing and changes no parameter's grad.
            replaced = out = out.detach().requires_grad_()

        def grad_hook(g: torch.Tensor) -> None:
            norms = g.detach().double().norm(dim=(0, 2))
            self.cur["time"] = (float(norms[0]), float(norms[-1]))

        out.register_hook(grad_hook)
        return replaced

    def _pre_hook(self, part: str) -> Any:
        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.cur.setdefault("stepped", set()).add(part)
            totals: dict[str, float] = {}
            finite = True
            for group in opt.param_groups:
                for p in group["params"]:
                    layer, pname = self.param_layer.get(id(p), ("?", "?"))
                    has = p.grad is not None
                    self.present[pname] = self.present.get(pname, False) or has
                    if not has:
                        continue
                    # NaN/Inf entries, not an overflowing float32 sum of squares (entries
                    # of 1e20 are finite; their squares are not): float64 holds them.
                    g = p.grad.detach().double()
                    if not bool(torch.isfinite(g).all()):
                        finite = False
                        continue
                    sq = float((g * g).sum())
                    player = pname.split(".")[0] if self.config.family in GANS else part
                    totals[player] = totals.get(player, 0.0) + sq
                    self.nonzero[pname] = self.nonzero.get(pname, False) or sq > 0
            for player, total in totals.items():
                self.cur.setdefault("gnorm", {})[player] = math.sqrt(total) if finite else math.inf
            if not finite:
                self.cur["bad_grad"] = True
            rho, before = self.cur.setdefault("rho", {}), self.cur.setdefault("before", {})
            for name, weights in self.layers.items():
                if self.part_of[name] != part:
                    continue
                grads = [p.grad for p in weights if p.grad is not None]
                if not grads:
                    continue
                g = math.sqrt(sum(float(x.detach().double().pow(2).sum()) for x in grads))
                w = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in weights))
                rho[name] = g / max(w, self.floor[name])
                before[name] = ([p.detach().clone() for p in weights], max(w, self.floor[name]))

        return hook

    def _post_hook(self, part: str) -> Any:
        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            upd = self.cur.setdefault("update", {})
            for name, (old, denom) in self.cur.get("before", {}).items():
                if self.part_of[name] != part:
                    continue
                d = math.sqrt(
                    sum(
                        float((p.detach().double() - o.double()).pow(2).sum())
                        for p, o in zip(self.layers[name], old, strict=True)
                    )
                )
                upd[name] = d / denom

        return hook

    # -- running -------------------------------------------------------------------------
    def _weights(self) -> dict[str, list[torch.Tensor]]:
        return {n: [p.detach().clone() for p in ws] for n, ws in self.layers.items()}

    def run(self) -> None:
        self.initial = self._weights()
        self.last_finite = self.initial
        for step in range(self.config.steps):
            self.cur = {}
            losses = self.sc.train_step(step)
            self.cur.pop("before", None)
            self.cur["loss"] = losses
            self.steps.append(self.cur)
            if not self.cur.get("bad_grad") and all(math.isfinite(v) for v in losses.values()):
                self.last_finite = self._weights()
        for h in self._handles:
            h.remove()


def _first_bad(steps: list[dict[str, Any]]) -> int | None:
    for i, s in enumerate(steps):
        if s.get("bad_grad") or not all(math.isfinite(v) for v in s["loss"].values()):
            return i
    return None


def _learned(losses: list[float], constant: float) -> tuple[bool, float, float]:
    """(learned, head, tail): the loss ended 10% below min(its start, the best constant)."""
    head, tail = _med(losses[:3]), _med(losses[-WINDOW:])
    if not (math.isfinite(head) and math.isfinite(tail)):
        return False, head, tail
    return tail <= LEARNED * min(head, constant), head, tail


def _too_large(run: _Run, valid: list[dict], constant: float, add: Any, allow: set) -> None:
    """"The gradient is too large": a layer's gradient is ``GROWTH`` times its weights on
    ``GROWTH_STEPS`` steps while the loss ends ``WORSE`` times the best constant prediction's
    (a small rate or Adam keeps the steps small, and the model never gets anywhere)."""
    tail = _med([s["loss"]["model"] for s in valid][-WINDOW:])
    if not (math.isfinite(tail) and constant > 0):
        return
    for name in run.order:
        rho = [s.get("rho", {}).get(name, math.nan) for s in valid]
        if tail >= WORSE * constant and sum(r >= GROWTH for r in rho) >= GROWTH_STEPS:
            add("exploding_gradient", name)
            return
        if tail >= constant and sum(r >= GROWTH / 10 for r in rho) >= GROWTH_STEPS:
            allow.add("exploding_gradient")


def _too_large_player(run: _Run, valid: list[dict], add: Any, allow: set) -> None:
    """"The gradient is too large" for a GAN, whose players have no constant prediction: a
    layer's gradient ``GROWTH`` times its weights on ``GROWTH_STEPS`` steps while a
    player's loss rose over the run and ends above ``ABSURD_PLAYER_LOSS`` (its rival all
    but certain).  The generated GAN loops never multiply their losses (``loss_scale``
    has no effect on them), so the logged losses are the loss functions' own values."""
    tail = math.nan
    for player in ("G", "D"):
        series = [s["loss"][player] for s in valid if player in s["loss"]]
        head, end = _med(series[:3]), _med(series[-WINDOW:])
        if series and math.isfinite(series[0]):
            head = min(head, series[0])  # the loss at the initial weights counts
        if math.isfinite(end) and end > head:  # risen: the rival gained certainty
            tail = max(end, tail) if math.isfinite(tail) else end
    if not math.isfinite(tail):
        return
    for name in run.order:
        rho = [s.get("rho", {}).get(name, math.nan) for s in valid]
        if tail > ABSURD_PLAYER_LOSS and sum(r >= GROWTH for r in rho) >= GROWTH_STEPS:
            add("exploding_gradient", name)
            return
        if tail > ABSURD_PLAYER_LOSS / 2 and sum(r >= GROWTH / 10 for r in rho) >= GROWTH_STEPS:
            allow.add("exploding_gradient")


def measure(config: Config) -> _Run:
    """Train the scenario once under plain hooks; the measurements are on the result."""
    run = _Run(config)
    run.run()
    return run


def label(config: Config) -> Label:
    """Train the scenario under plain torch and label it (see docs/definitions.md)."""
    run = measure(config)
    c = config
    steps = run.steps
    lab = Label()
    kinds: dict[str, set[str]] = {}
    allow: set[str] = set()
    num: dict[str, Any] = {}

    def add(kind: str, layer: str) -> None:
        kinds.setdefault(kind, set()).add(layer)

    bad = _first_bad(steps)
    valid = steps[: bad if bad is not None else len(steps)]
    parts = list(run.sc.parts)
    players = ["G", "D"] if c.family in GANS else ["model"]
    constant = run.sc.constant_loss()
    learned: dict[str, bool] = {}
    for player in players:
        series = [s["loss"][player] for s in valid]
        ok, head, tail = _learned(series, constant)
        if c.family in GANS or len(valid) < 8:
            # An adversarial loss is not minimised (judged by gradients below); a run that
            # turned non-finite early leaves too few steps to say whether it learned.
            ok = True
        learned[player] = ok
        num[f"loss_{player}"] = [round(head, 4), round(tail, 4)]
    num["constant_loss"] = round(constant, 4)
    stalled = not all(learned.values())
    num["stalled"] = stalled
    if c.family in GANS:
        d_ok, _, _ = _learned([s["loss"]["D"] for s in valid], 2 * math.log(2.0))
        player_stalled = {"G": _gan_generator_stalls(valid), "D": not d_ok and len(valid) >= 8}
    else:
        player_stalled = {"model": stalled}
    num["player_stalled"] = {k: v for k, v in player_stalled.items() if v}

    # -- non-finite ---------------------------------------------------------------------
    stepped = {p: sum(p in s.get("stepped", ()) for s in steps) for p in parts}
    skipped = max(len(steps) - n for n in stepped.values())
    num["skipped_steps"] = skipped
    if bad is not None or skipped >= len(steps) / 2:
        where = bad if bad is not None else len(steps) - 1
        num["first_nonfinite_step"] = bad
        outs = steps[where].get("bad_outputs", [])
        lab.culprit = outs[0] if outs else None
        add("nonfinite_gradient", lab.culprit or "")
        allow |= {"exploding_gradient", "vanishing_gradient", "dead_relu", "saturated_activation"}
    elif skipped >= len(steps) / 4:
        # Between half the bound and the bound, as for every fraction: not wrong to report.
        allow.add("nonfinite_gradient")

    # -- per-layer gradient/weight ratios through depth --------------------------------
    rho = {n: _med([s.get("rho", {}).get(n, math.nan) for s in valid]) for n in run.layers}
    atten_min, growth_max = math.inf, 0.0
    for part in parts:
        order = [n for n in run.order if run.part_of[n] == part and math.isfinite(rho[n])]
        if c.family == "gan_container":
            groups = [[n for n in order if n.startswith(p)] for p in ("G.", "D.")]
        else:
            groups = [order]
        for chain in groups:
            for i, name in enumerate(chain[:-1]):
                player = name.split(".")[0] if c.family in GANS else "model"
                later = [rho[m] for m in chain[i + 1 :]]
                if max(later) > 0:
                    a = rho[name] / max(later)
                    atten_min = min(atten_min, a)
                    if a < ATTENUATION and player_stalled[player]:
                        add("vanishing_gradient", name)
                    if a < 10 * ATTENUATION and (player_stalled[player] or c.family in GANS):
                        # An adversarial loss cannot show the harm within a short run.
                        allow.add("vanishing_gradient")
                if rho[name] > 0 and min(later) > 0:
                    growth_max = max(growth_max, rho[name] / min(later))
                    if rho[name] / min(later) >= GROWTH:
                        add("exploding_gradient", name)
    num["depth_attenuation"] = atten_min if math.isfinite(atten_min) else None
    num["depth_growth"] = growth_max or None
    if growth_max >= GROWTH / 10:
        allow.add("exploding_gradient")

    # -- through time ------------------------------------------------------------------
    if c.family in RECURRENT:
        ratios = [s["time"][0] / s["time"][1] for s in valid if "time" in s and s["time"][1] > 0]
        tau = _med(ratios)
        num["time_ratio"] = tau
        rec = "features.rnn" if c.family != "loop_rnn" else "features.cell"
        if math.isfinite(tau):
            if tau < TIME_ATTENUATION and stalled:
                add("vanishing_gradient", rec)
            if tau < 10 * TIME_ATTENUATION and stalled:
                allow.add("vanishing_gradient")
            if tau >= GROWTH:
                add("exploding_gradient", rec)
            if tau >= GROWTH / 10:
                allow.add("exploding_gradient")

    # -- over training steps --------------------------------------------------------------
    for player in players:
        gn = [s.get("gnorm", {}).get(player, math.nan) for s in valid]
        finite = [g for g in gn if math.isfinite(g)]
        if len(finite) < 6:
            continue
        base = _med(finite[:3])
        prefix = "G." if player == "G" else "D." if player == "D" else ""
        chain = [n for n in run.order if n.startswith(prefix)]
        first = chain[0] if chain else player
        if base > 0 and c.family not in GANS:  # a GAN player's gradient follows its rival
            growth_steps = sum(g >= GROWTH * base for g in finite)
            num[f"grad_growth_steps_{player}"] = growth_steps
            if growth_steps >= GROWTH_STEPS:
                add("exploding_gradient", first)
            if sum(g >= GROWTH / 10 * base for g in finite) >= GROWTH_STEPS:
                allow.add("exploding_gradient")
        if base > 0:
            drop = _med(finite[-WINDOW:]) / base
            num[f"grad_drop_{player}"] = drop
            if drop < TEMPORAL_DROP and player_stalled[player]:
                add("vanishing_gradient", first)
            if drop < 10 * TEMPORAL_DROP and player_stalled[player]:
                allow.add("vanishing_gradient")
    if c.family not in GANS:
        _too_large(run, valid, constant, add, allow)
    else:
        _too_large_player(run, valid, add, allow)
    big_updates = sum(max(s.get("update", {}).values(), default=0.0) > UPDATE_RATIO for s in valid)
    num["big_update_steps"] = big_updates
    if big_updates >= UPDATE_STEPS:
        worst = max(
            run.layers,
            key=lambda n: max((s.get("update", {}).get(n, 0.0) for s in valid), default=0.0),
        )
        add("exploding_gradient", worst)
    if sum(max(s.get("update", {}).values(), default=0.0) > UPDATE_RATIO / 2 for s in valid) >= 2:
        allow.add("exploding_gradient")
    if c.family not in GANS:
        series = [s["loss"]["model"] for s in valid]
        _, head, tail = _learned(series, constant)
        # Where training started: the loss at the initial weights, unless the median of the
        # first steps is lower (a blow-up within the first steps must not raise the start).
        if series and math.isfinite(series[0]):
            head = min(head, series[0])
        if math.isfinite(head) and head > 0 and tail > LOSS_CLIMB * head:
            add("exploding_gradient", run.order[0] if run.order else "")
        if math.isfinite(head) and head > 0 and tail > LOSS_CLIMB / 3 * head:
            allow.add("exploding_gradient")

    # -- activity ------------------------------------------------------------------------
    last = valid[-WINDOW:]
    if len(last) >= 3:
        dead_max = 0.0
        names = {n for s in last for n in s.get("active", {})}
        for name in sorted(names):
            masks = [s["active"][name] for s in last if name in s.get("active", {})]
            alive = masks[0].clone()
            for m in masks[1:]:
                alive |= m
            frac = 1.0 - float(alive.float().mean())
            dead_max = max(dead_max, frac)
            harmed = player_stalled.get(name.split(".")[0], stalled)
            if frac >= DEAD and (harmed or frac >= SEVERE):
                add("dead_relu", name)
            if frac >= DEAD / 2:
                allow.add("dead_relu")
        num["dead_fraction"] = round(dead_max, 3)
    half = valid[len(valid) // 2 :]
    if half:
        sat_max = 0.0
        names = {n for s in half for n in s.get("sat", {})}
        for name in sorted(names):
            frac = _med([_med(s["sat"][name]) for s in half if name in s.get("sat", {})])
            if not math.isfinite(frac):
                continue
            output_act = name in run.output_acts
            if not output_act:
                sat_max = max(sat_max, frac)
            harmed = player_stalled.get(name.split(".")[0], stalled)
            if frac >= SATURATED and (harmed or frac >= SEVERE) and not output_act:
                add("saturated_activation", name)
            if frac >= SATURATED / 2:
                allow.add("saturated_activation")
        num["saturated_fraction"] = round(sat_max, 3)

    # -- parameters without gradient ---------------------------------------------------------
    for layer, pname in run.param_layer.values():
        if pname not in run.present:
            continue  # its optimizer never stepped (a GradScaler skipped every step)
        if not run.present[pname]:
            add("no_gradient", layer)
        elif not run.nonzero.get(pname, False):
            allow.add("no_gradient")

    # -- symmetric rows ----------------------------------------------------------------------
    sym_max = 0.0
    # A run that blew up (non-finite, or exploding by the criteria above): rows it left
    # tiny next to the rows it blew up are within the tolerance of each other.
    blew_up = bad is not None or "exploding_gradient" in kinds
    for name in run.layers:
        for end, start in zip(run.last_finite[name], run.initial[name], strict=True):
            frac, at_init = _identical_rows(end), _identical_rows(start)
            sym_max = max(sym_max, frac)
            # Rows made identical by a blow-up (not at init) are a consequence, not a cause.
            if frac >= SYMMETRIC and (not blew_up or at_init >= SYMMETRIC):
                add("symmetric_weights", name)
            if frac >= SYMMETRIC / 2:
                allow.add("symmetric_weights")
    num["symmetric_fraction"] = round(sym_max, 3)
    if "symmetric_weights" in kinds:
        # Identical rows make every gradient statistic degenerate: what follows is a symptom.
        for kind in (
            "vanishing_gradient",
            "exploding_gradient",
            "dead_relu",
            "saturated_activation",
            "no_gradient",
        ):
            allow.add(kind)
            kinds.pop(kind, None)
    if "saturated_activation" in kinds or "dead_relu" in kinds:
        allow.add("vanishing_gradient")
    if "dead_relu" in kinds:
        allow.add("no_gradient")

    lab.kinds = {k: sorted(v) for k, v in kinds.items()}
    lab.allow = allow - set(kinds)
    lab.numbers = {
        k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in num.items()
    }
    return lab


def _identical_rows(p: torch.Tensor) -> float:
    """Fraction of a matrix's rows within float32 rounding of another row.  Measured in
    float64: finite float32 weights near their largest values (a run about to blow up)
    have norms and distances that overflow float32, and an infinite tolerance made every
    row a copy of every other."""
    rows = p.double().reshape(p.shape[0], -1)
    if rows.shape[0] < 2 or not bool(torch.isfinite(rows).all()):
        return 0.0
    tol = 1e-6 * max(float(rows.norm(dim=1).max()), 1e-12)
    d = torch.cdist(rows, rows)
    d.fill_diagonal_(math.inf)
    return float((d.min(dim=1).values <= tol).float().mean())


def _gan_generator_stalls(steps: list[dict[str, Any]]) -> bool:
    """The generator is not fooling the discriminator more at the end than at the start."""
    series = [s["loss"]["G"] for s in steps if "G" in s["loss"]]
    if not series:
        return False
    head, tail = _med(series[:3]), _med(series[-WINDOW:])
    return not (math.isfinite(head) and math.isfinite(tail)) or tail >= LEARNED * head

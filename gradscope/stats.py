"""The hot path: batched, on-device statistics of gradients, parameters and activations.

Nothing here synchronises with the host except :func:`to_host`, which the scope
calls once per recorded step.  Every other function returns tensors that stay on
the model's device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Activation modules whose exact zeros mean "this unit is off".
RELU_FAMILY = (torch.nn.ReLU, torch.nn.ReLU6)

NAN = float("nan")


def activation_kind(module: torch.nn.Module) -> str:
    """Classify a module by how its output should be measured: relu, sigmoid, tanh or plain.

    A recurrent layer's output is its hidden state, which passes through tanh (RNN, GRU,
    LSTM's o * tanh(c)) or ReLU (``nn.RNN(nonlinearity="relu")``): it saturates the same way.
    """
    if isinstance(module, torch.nn.RNN):
        return "relu" if getattr(module, "nonlinearity", "tanh") == "relu" else "tanh"
    if isinstance(module, (torch.nn.GRU, torch.nn.LSTM)):
        return "tanh"
    if isinstance(module, RELU_FAMILY):
        return "relu"
    if isinstance(module, (torch.nn.Sigmoid, torch.nn.Hardsigmoid)):
        return "sigmoid"
    if isinstance(module, (torch.nn.Tanh, torch.nn.Hardtanh)):
        return "tanh"
    return "plain"


def first_float_tensor(output: object) -> Tensor | None:
    """The first floating-point tensor in a module output (tensor, tuple, list, dict or
    dataclass)."""
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_float_tensor(item)
            if found is not None:
                return found
    elif isinstance(output, dict):
        for item in output.values():
            found = first_float_tensor(item)
            if found is not None:
                return found
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        for item in dataclasses.fields(output):
            found = first_float_tensor(getattr(output, item.name, None))
            if found is not None:
                return found
    return None


def unit_dims(x: Tensor) -> tuple[int, ...]:
    """Dimensions to reduce so that one value per unit (feature or channel) remains.

    Convolution maps (N, C, H, W[, D]) keep channel dim 1; everything else keeps the last dim.
    """
    if x.dim() >= 4:
        return (0, *range(2, x.dim()))
    return tuple(range(x.dim() - 1))


@dataclass
class ActivationAccumulator:
    """Per-module activation sums for one recorded step, kept as device tensors."""

    kind: str
    calls: int = 0
    numel: int = 0
    sampled: int = 0
    zero_sampled: int = 0
    units: int = 0
    bad: list[Tensor] = field(default_factory=list)
    bad_input: list[Tensor] = field(default_factory=list)
    sumsqs: list[Tensor] = field(default_factory=list)
    zeros: list[Tensor] = field(default_factory=list)
    saturated: list[Tensor] = field(default_factory=list)
    spread: list[Tensor] = field(default_factory=list)
    unit_max: Tensor | None = None

    def add(self, output: Tensor, sample_rows: int, full: bool) -> None:
        """Measure one call's output (already detached) with a few reductions.

        The finiteness check covers the whole tensor (how the first NaN module is found;
        a finite but huge output is finite, whatever its sum would be).  The shape statistics
        (size, zeros, silent units, saturation) use the first ``sample_rows`` rows
        unless ``full``.
        """
        x = output
        self.calls += 1
        self.numel += x.numel()
        if x.numel() == 0:
            return
        self.bad.append(x)  # checked for NaN/Inf with every module's at once (foreach)
        acc = _accumulation_dtype(x)
        sample = x if full or x.dim() < 2 or x.shape[0] <= sample_rows else x[:sample_rows]
        self.sampled += sample.numel()
        # A norm reads the tensor once and allocates nothing; its square is the sum of squares.
        self.sumsqs.append(torch.linalg.vector_norm(sample, dtype=acc))
        if self.kind == "relu" or full:
            self.zeros.append((sample == 0).sum())
            self.zero_sampled += sample.numel()
        if self.kind == "relu" and sample.dim() >= 2:
            per_unit = sample.amax(dim=unit_dims(sample))
            self.units = per_unit.numel()
            if self.unit_max is None or self.unit_max.shape != per_unit.shape:
                self.unit_max = per_unit
            else:
                self.unit_max = torch.maximum(self.unit_max, per_unit)
        if self.kind == "sigmoid":
            self.saturated.append(((sample - 0.5).abs() > 0.49).sum())
        elif self.kind == "tanh":
            self.saturated.append((sample.abs() > 0.99).sum())

    def add_spread(self, output: Tensor, sample_rows: int) -> None:
        """Measure how much the model's output varies between the samples of the batch
        (the last call's value is kept); see :func:`between_sample_share`."""
        self.spread = [between_sample_share(output[:sample_rows])]

    def add_input(self, given: Tensor) -> None:
        """Note whether one call's input had NaN/Inf (it tells "made here" from "passed in")."""
        if given.numel():
            self.bad_input.append(given)

    def total(self, part: str) -> Tensor:
        """The step's total of ``sums``, ``zeros`` or ``saturated`` over all calls."""
        parts: list[Tensor] = getattr(self, part)
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum()

    def total_norm(self) -> Tensor:
        """The step's activation L2 norm over all calls (its square is the sum of squares)."""
        parts = self.sumsqs
        return parts[0] if len(parts) == 1 else torch.stack(parts).norm()


def between_sample_share(x: Tensor) -> Tensor:
    """The share of the output's variation that differs between samples (rows), in [0, 1].

    Each sample's output is centred on its own mean first (a shared shift of logits does
    not change a prediction), then the variance across samples is compared with the
    squared mean output: a model that predicts the same thing for every input (only its
    output bias learned) scores 0, one whose outputs follow their inputs near 1.
    """
    if x.dim() == 0 or x.shape[0] < 2:
        return torch.full((), math.nan, device=x.device)
    z = x.detach().reshape(x.shape[0], -1).float()
    if z.shape[1] > 1:
        z = z - z.mean(1, keepdim=True)
    between = z.var(0, unbiased=False).mean()
    offset = z.mean(0).square().mean()
    return between / (between + offset).clamp_min(torch.finfo(torch.float32).tiny)


def _accumulation_dtype(x: Tensor) -> torch.dtype | None:
    """float32 for half-precision tensors (their sums overflow at 65,504), else None."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None


def nonfinite_flags(tensors: list[Tensor]) -> list[Tensor]:
    """One device scalar per tensor, NaN/Inf exactly when some entry is: the max-abs norms
    of all of them in one foreach call (finite huge values stay finite)."""
    if not tensors:
        return []
    return list(torch._foreach_norm(tensors, float("inf")))


def nonfinite_flag(x: Tensor) -> Tensor:
    """A device scalar that is NaN/Inf exactly when some entry of ``x`` is.

    One reduction, no mask: the sum in float64, which finite float32/float16 entries
    cannot overflow (a float32 sum can: a finite 1e36 output is not a NaN).
    """
    return torch.sum(x, dtype=torch.float64)


def grad_statistics(
    grads: list[Tensor], params: list[Tensor], detail: bool, full: bool
) -> dict[str, list[Tensor]]:
    """Per-tensor L2 norms of the gradients; on ``detail`` steps also the parameters' L2
    norms and the gradients' L1 norms, estimated from the first :data:`UPDATE_SAMPLE`
    entries of each tensor (exact up to that size), like the update norms.  ``full``
    makes both exact and adds each gradient's smallest and largest entries (max |g| is
    formed on the host).

    A non-finite entry makes the L2 norm non-finite, so the default needs no separate
    check (exact L1 and max norms read every gradient again, at 2x and 1x the L2's cost).
    """
    if any(g.is_sparse for g in grads):
        grads = [g.coalesce().values() if g.is_sparse else g for g in grads]
    if full:
        norms = list(torch._foreach_norm(grads + params, 2))
        out = {"grad_l2": norms[: len(grads)], "param_norm": norms[len(grads) :]}
    else:
        out = {"grad_l2": list(torch._foreach_norm(grads, 2)) if grads else []}
    if detail and not full:
        out["param_norm"] = _sampled_norms(params, 2)
    if full:
        out["grad_l1"] = [g.abs().sum() for g in grads]
        extremes = [torch.aminmax(g) if g.numel() else (g.new_zeros(()),) * 2 for g in grads]
        out["grad_min"] = [low for low, _ in extremes]
        out["grad_max"] = [high for _, high in extremes]
    elif detail and grads:
        out["grad_l1"] = _sampled_norms(grads, 1)
    return out


def _sampled_norms(tensors: list[Tensor], order: int) -> list[Tensor]:
    """L1 or L2 norms from the first :data:`UPDATE_SAMPLE` entries of each tensor, scaled
    up to the whole tensor (exact for tensors up to that size)."""
    if not tensors:
        return []
    heads = [_head(t, UPDATE_SAMPLE) for t in tensors]
    return _scaled_to_whole(list(torch._foreach_norm(heads, order)), tensors, heads, order)


def _scaled_to_whole(
    norms: list[Tensor], tensors: list[Tensor], heads: list[Tensor], order: int
) -> list[Tensor]:
    """Scale each head's L1 or L2 norm up to its whole tensor, on the device, in place."""
    pairs = zip(tensors, heads, strict=True)
    torch._foreach_mul_(norms, [(t.numel() / max(h.numel(), 1)) ** (1 / order) for t, h in pairs])
    return norms


def nonfinite_counts(tensors: list[Tensor]) -> list[float]:
    """Exact NaN/Inf counts of a few tensors (used only once a norm came out non-finite)."""
    if not tensors:
        return []
    return to_host([(~torch.isfinite(t)).sum() for t in tensors])


#: Entries of each parameter whose change is measured to estimate the update size.
UPDATE_SAMPLE = 4096


def snapshot(params: list[Tensor], sample: int | None = UPDATE_SAMPLE) -> list[Tensor]:
    """Copies of (the first ``sample`` entries of) each parameter, taken before a step.

    A fixed slice keeps the cost flat however large the model; the update-to-weight
    ratio it gives is exact for tensors up to ``sample`` entries and an unbiased-scale
    estimate beyond (see :func:`update_norms`).  ``sample=None`` copies everything.
    """
    return [_head(p, sample).clone() for p in params]


def _head(p: Tensor, sample: int | None) -> Tensor:
    flat = p.reshape(-1)
    return flat if sample is None or flat.numel() <= sample else flat[:sample]


def update_norms(
    params: list[Tensor], before: list[Tensor], sample: int | None = UPDATE_SAMPLE
) -> list[Tensor]:
    """L2 norm of (after - before) on each sampled slice, scaled up to the whole tensor."""
    heads = [_head(p, sample) for p in params]
    norms = list(torch._foreach_norm(torch._foreach_sub(heads, before), 2))
    return _scaled_to_whole(norms, params, heads, 2)


#: The corner of each weight matrix whose rows are compared by :func:`row_spread`.
ROW_SPREAD_ROWS = 1024
ROW_SPREAD_COLUMNS = 256

_PROBES: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}


def row_spread(weights: list[Tensor]) -> list[Tensor]:
    """How different the rows (output units) of each weight matrix are; 0 when all are equal.

    Projects (a corner of) each matrix on a fixed random unit vector (one matrix-vector
    product, no copy) and takes the standard deviation across rows: identical rows give
    identical values; random rows give about the weights' standard deviation.
    """
    out = []
    for w in weights:
        # Identical rows are identical on any block of columns: a corner is enough.
        flat = w.detach().flatten(1)[:ROW_SPREAD_ROWS, :ROW_SPREAD_COLUMNS]
        key = (flat.shape[1], flat.device, flat.dtype)
        probe = _PROBES.get(key)
        if probe is None:
            g = torch.Generator().manual_seed(flat.shape[1])
            probe = torch.randn(flat.shape[1], generator=g).to(flat.device, flat.dtype)
            probe = probe / probe.norm()
            _PROBES[key] = probe
        out.append((flat @ probe).std() if flat.shape[0] > 1 else flat.new_zeros(()))
    return out


def to_host(tensors: list[Tensor]) -> list[float]:
    """Bring a list of scalar tensors to the host with one synchronisation per device."""
    if not tensors:
        return []
    try:
        # The common case: scalars on one device.  Mixed dtypes promote (float32 holds
        # counts exactly up to 2**24); mixed devices or shapes raise and take the slow path.
        return torch.stack(tensors).tolist()
    except RuntimeError:
        pass
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    by_device: dict[torch.device, tuple[list[int], list[Tensor]]] = {}
    for (device, _dtype), idx in groups.items():
        order, stacks = by_device.setdefault(device, ([], []))
        order.extend(idx)
        group = [tensors[i] if tensors[i].dim() == 0 else tensors[i].reshape(()) for i in idx]
        stacks.append(torch.stack(group).to(torch.float64))
    values = [NAN] * len(tensors)
    for order, stacks in by_device.values():
        flat = torch.cat(stacks).tolist() if len(stacks) > 1 else stacks[0].tolist()
        for i, v in zip(order, flat, strict=True):
            values[i] = v
    return values

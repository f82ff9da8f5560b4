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

from gradscope.functional_acts import SIGMOID_SATURATES, TANH_SATURATES

#: Activation modules whose exact zeros mean "this unit is off".
RELU_FAMILY = (torch.nn.ReLU, torch.nn.ReLU6)

NAN = float("nan")


def activation_kind(module: torch.nn.Module) -> str:
    """Classify a module by how its output should be measured: relu, sigmoid, tanh or plain.

    A recurrent layer's output is its hidden state, which passes through tanh (RNN, GRU,
    LSTM's o * tanh(c), and their cells called in a loop) or ReLU
    (``nn.RNN(nonlinearity="relu")``): it saturates the same way.
    """
    if isinstance(module, (torch.nn.RNN, torch.nn.RNNCell)):
        return "relu" if getattr(module, "nonlinearity", "tanh") == "relu" else "tanh"
    if isinstance(module, (torch.nn.GRU, torch.nn.LSTM, torch.nn.GRUCell, torch.nn.LSTMCell)):
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


#: Modules whose output keeps channels in dim 1 whatever its rank: a (N, C, L) map of a
#: 1-D convolution looks like a (N, T, H) sequence by shape alone.
CHANNELS_FIRST_TYPES: tuple[type, ...] = (
    torch.nn.Conv1d,
    torch.nn.ConvTranspose1d,
    torch.nn.BatchNorm1d,
    torch.nn.InstanceNorm1d,
    torch.nn.GroupNorm,
    torch.nn.MaxPool1d,
    torch.nn.AvgPool1d,
    torch.nn.AdaptiveAvgPool1d,
    torch.nn.AdaptiveMaxPool1d,
)


def float_tensors(output: object, limit: int = 64) -> list[Tensor]:
    """Every floating-point tensor in a (model) output: tensor, tuple, list, dict or
    dataclass, nested; at most ``limit``."""
    found: list[Tensor] = []
    pending = [output]
    while pending and len(found) < limit:
        item = pending.pop()
        if isinstance(item, Tensor):
            if item.is_floating_point():
                found.append(item)
        elif isinstance(item, (tuple, list)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            pending.extend(getattr(item, f.name, None) for f in dataclasses.fields(item))
    return found


def storage_key(x: Tensor) -> int | None:
    """Which memory a tensor views (a squeezed or sliced view keeps its base's), or None
    for a tensor without storage."""
    try:
        return x.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def unit_dims(x: Tensor, channels_first: bool = False) -> tuple[int, ...]:
    """Dimensions to reduce so that one value per unit (feature or channel) remains.

    Convolution maps (N, C, H, W[, D]) keep channel dim 1, as does a 3-D map known to come
    from a 1-D convolution (``channels_first``); everything else keeps the last dim.
    """
    if x.dim() >= 4 or (channels_first and x.dim() == 3):
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
    #: Entries each call's saturated count was taken over (see :meth:`saturated_total`).
    saturated_of: list[int] = field(default_factory=list)
    spread: list[Tensor] = field(default_factory=list)
    input_norms: list[Tensor] = field(default_factory=list)
    input_sampled: int = 0
    unit_max: Tensor | None = None

    def add(
        self, output: Tensor, sample_rows: int, full: bool, channels_first: bool = False
    ) -> None:
        """Measure one call's output (already detached) with a few reductions.

        The finiteness check covers the whole tensor (how the first NaN module is found;
        a finite but huge output is finite, whatever its sum would be).  The shape statistics
        (size, zeros, silent units, saturation) use the first ``sample_rows`` rows
        unless ``full``; ``channels_first`` says a 3-D output's units are its dim 1.
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
        relu = self.kind in ("relu", "pre_relu")
        if relu or full:
            # A ReLU applied to this output as a function zeroes what is <= 0 here.
            off = sample <= 0 if self.kind == "pre_relu" else sample == 0
            self.zeros.append(off.sum())
            self.zero_sampled += sample.numel()
        if relu and sample.dim() >= 2:
            per_unit = sample.amax(dim=unit_dims(sample, channels_first))
            self.units = per_unit.numel()
            if self.unit_max is None or self.unit_max.shape != per_unit.shape:
                self.unit_max = per_unit
            else:
                self.unit_max = torch.maximum(self.unit_max, per_unit)
        if self.kind == "sigmoid":
            self.saturated.append(((sample - 0.5).abs() > 0.49).sum())
        elif self.kind == "tanh":
            self.saturated.append((sample.abs() > 0.99).sum())
        elif self.kind == "pre_sigmoid":  # a sigmoid applied to this output as a function
            self.saturated.append((sample.abs() > SIGMOID_SATURATES).sum())
        elif self.kind == "pre_tanh":
            self.saturated.append((sample.abs() > TANH_SATURATES).sum())
        else:
            return
        self.saturated_of.append(sample.numel())

    def add_spread(self, output: Tensor, sample_rows: int) -> None:
        """Measure how much the model's output varies between the samples of the batch
        (the last call's value is kept); see :func:`between_sample_share`.  A 0-dim output
        (a model that returns its loss) has no samples: NaN."""
        rows = output if output.dim() == 0 else output[:sample_rows]
        self.spread = [between_sample_share(rows)]

    def add_input(self, given: Tensor, sample_rows: int, full: bool) -> None:
        """Note whether one call's input had NaN/Inf (it tells "made here" from "passed in")
        and measure its size on the first ``sample_rows`` rows (how large the data is, as
        the first layer sees it)."""
        if not given.numel():
            return
        self.bad_input.append(given)
        whole = full or given.dim() < 2 or given.shape[0] <= sample_rows
        sample = given if whole else given[:sample_rows]
        acc = _accumulation_dtype(sample)
        self.input_norms.append(torch.linalg.vector_norm(sample, dtype=acc))
        self.input_sampled += sample.numel()

    def input_norm(self) -> Tensor:
        """The step's input L2 norm over all calls' sampled rows."""
        parts = self.input_norms
        return parts[0] if len(parts) == 1 else torch.stack(parts).norm()

    def total(self, part: str) -> Tensor:
        """The step's total of ``sums``, ``zeros`` or ``saturated`` over all calls
        (``saturated``: see :meth:`saturated_total`)."""
        parts: list[Tensor] = getattr(self, part)
        if len(parts) == 1:
            return parts[0]
        if part == "saturated":
            return self.saturated_total()
        return torch.stack(parts).sum()

    def saturated_total(self) -> Tensor:
        """The saturated count of a module called several times in one step, as the median
        call's share of its entries times the entries sampled (the definitions take the
        fraction per step as the median over calls: a GAN discriminator's calls on real
        data and on generated samples saturate differently, and the generator's gradient
        passes through the latter)."""
        counts = torch.stack(self.saturated).double()
        sizes = torch.tensor(self.saturated_of, dtype=torch.float64, device=counts.device)
        shares = (counts / sizes.clamp_min(1)).sort().values
        n = shares.numel()
        middle = shares[n // 2] if n % 2 else (shares[n // 2 - 1] + shares[n // 2]) / 2
        return middle * sum(self.saturated_of)

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


def nonfinite_flags(tensors: list[Tensor]) -> Tensor | list[Tensor]:
    """One device value per tensor, NaN/Inf exactly when some entry is: L2 norms
    accumulated in float64 (squares of float32 or narrower entries cannot overflow
    there, so finite huge values stay finite); small tensors of one shape are stacked and
    reduced together (a 1-D tensor in list order then), the others in one foreach call.
    Float64 tensors take the max-abs norm (slower, exact for any value)."""
    if not tensors:
        return []
    if any(t.dtype == torch.float64 for t in tensors):
        return list(torch._foreach_norm(tensors, float("inf")))
    layout = Layout.of(tensors)
    if all(t.is_cpu for t in tensors):
        return _cpu_flags(tensors, layout)
    try:
        return _l2_norms(tensors, layout, torch.float64)
    except (TypeError, RuntimeError):  # torch before 2.4: no dtype argument
        return list(torch._foreach_norm(tensors, float("inf")))


def _l2_norms(
    tensors: list[Tensor], layout: Layout | None, dtype: torch.dtype | None
) -> Tensor | list[Tensor]:
    """L2 norm of each tensor (grouped by ``layout``), accumulated in ``dtype``."""
    if layout is None or not layout.groups:
        return list(torch._foreach_norm(tensors, 2, dtype=dtype))
    parts = [_group_norms(s, 2, dtype) for s in layout.stack(tensors)]
    if layout.rest:
        rest = [tensors[i] for i in layout.rest]
        parts.append(torch.stack(torch._foreach_norm(rest, 2, dtype=dtype)))
    return layout.in_order(parts)


def _cpu_flags(tensors: list[Tensor], layout: Layout | None) -> Tensor:
    """On the CPU, values can be read at no cost: float32 L2 norms (~3x faster than
    float64 ones), and only a tensor whose float32 norm overflowed is measured again in
    float64 (finite huge entries stay finite)."""
    norms = _l2_norms(tensors, layout, None)
    norms = norms if isinstance(norms, Tensor) else torch.stack(norms)
    overflowed = (~torch.isfinite(norms)).nonzero().flatten().tolist()
    if not overflowed:
        return norms
    norms = norms.to(torch.float64)
    for i in overflowed:
        norms[i] = torch.linalg.vector_norm(tensors[i], dtype=torch.float64)
    return norms


def nonfinite_flag(x: Tensor) -> Tensor:
    """A device scalar that is NaN/Inf exactly when some entry of ``x`` is.

    One reduction, no mask: the sum in float64, which finite float32/float16 entries
    cannot overflow (a float32 sum can: a finite 1e36 output is not a NaN).
    """
    return torch.sum(x, dtype=torch.float64)


def grad_statistics(
    grads: list[Tensor],
    params: list[Tensor],
    detail: bool,
    full: bool,
    layouts: tuple[Layout | None, Layout | None] = (None, None),
    param_stacks: list[Tensor] | None = None,
) -> dict[str, Tensor | list[Tensor]]:
    """Per-tensor L2 norms of the gradients; on ``detail`` steps also the parameters' L2
    norms and the gradients' L1 norms, estimated from the first :data:`UPDATE_SAMPLE`
    entries of each tensor (exact up to that size), like the update norms.  ``full``
    makes both exact and adds each gradient's smallest and largest entries (max |g| is
    formed on the host).

    ``layouts`` (of the gradients, of the parameters; see :class:`Layout`) reduce small
    tensors of one shape together: each value is then one 1-D tensor in list order.
    ``param_stacks`` are the parameter layout's stacked groups, when already made.

    A non-finite entry makes the L2 norm non-finite, so the default needs no separate
    check (exact L1 and max norms read every gradient again, at 2x and 1x the L2's cost).
    """
    grad_layout, param_layout = layouts
    if grad_layout is None and any(g.is_sparse for g in grads):
        grads = [g.coalesce().values() if g.is_sparse else g for g in grads]
    sample = None if full else UPDATE_SAMPLE
    out: dict[str, Tensor | list[Tensor]] = {"grad_l2": _norms(grads, 2, grad_layout)}
    if detail or full:
        out["param_norm"] = _norms(params, 2, param_layout, sample, param_stacks)
    if full:
        out["grad_l1"] = [g.abs().sum() for g in grads]
        # A complex gradient's extremes are its real and imaginary parts' (no order).
        real = [torch.view_as_real(g) if g.is_complex() else g for g in grads]
        extremes = [torch.aminmax(g) if g.numel() else (g.new_zeros(()),) * 2 for g in real]
        out["grad_min"] = [low for low, _ in extremes]
        out["grad_max"] = [high for _, high in extremes]
    elif detail and grads:
        out["grad_l1"] = _norms(grads, 1, grad_layout, UPDATE_SAMPLE)
    return out


def _norms(
    tensors: list[Tensor],
    order: int,
    layout: Layout | None,
    sample: int | None = None,
    stacks: list[Tensor] | None = None,
) -> Tensor | list[Tensor]:
    """L1/L2 norm of (the first ``sample`` entries of, scaled up to) each tensor."""
    if layout is not None:
        return layout.norms(tensors, order, sample, stacks)
    if not tensors:
        return []
    if sample is None:
        return list(torch._foreach_norm(tensors, order))
    return _sampled_norms(tensors, order, sample)


def _sampled_norms(tensors: list[Tensor], order: int, sample: int = 0) -> list[Tensor]:
    """L1 or L2 norms from the first ``sample`` (default :data:`UPDATE_SAMPLE`) entries of
    each tensor, scaled up to the whole tensor (exact for tensors up to that size)."""
    if not tensors:
        return []
    heads = [_head(t, sample or UPDATE_SAMPLE) for t in tensors]
    return _scaled_to_whole(list(torch._foreach_norm(heads, order)), tensors, heads, order)


def _scaled_to_whole(
    norms: list[Tensor], tensors: list[Tensor], heads: list[Tensor], order: int
) -> list[Tensor]:
    """Scale each head's L1 or L2 norm up to its whole tensor, on the device, in place."""
    pairs = zip(tensors, heads, strict=True)
    scales = [(t.numel() / max(h.numel(), 1)) ** (1 / order) for t, h in pairs]
    if any(scale != 1.0 for scale in scales):
        torch._foreach_mul_(norms, scales)
    return norms


def nonfinite_counts(tensors: list[Tensor]) -> list[float]:
    """Exact NaN/Inf counts of a few tensors (used only once a norm came out non-finite)."""
    if not tensors:
        return []
    return to_host([(~torch.isfinite(t)).sum() for t in tensors])


#: Entries of each parameter whose change is measured to estimate the update size.
UPDATE_SAMPLE = 4096
#: Tensors up to this many entries are stacked with the others of their shape and reduced
#: together: below it, a reduction's fixed cost (a few microseconds of dispatch) is more
#: than copying the tensor.  Every such tensor is whole in its sample (UPDATE_SAMPLE).
STACK_MAX = UPDATE_SAMPLE


class Layout:
    """How a fixed list of tensors is reduced per tensor with few calls.

    Small tensors of one shape, dtype and device form a group that is stacked into one
    tensor and reduced with one call; the others (large, or alone of their shape) are
    reduced one by one in a single ``foreach`` call.  Results come back as one 1-D tensor
    in list order, so a model of 1,000 identical layers costs a handful of calls.
    Build one with :meth:`of`; it stays valid while the tensors keep their shapes.
    """

    def __init__(self, groups: list[list[int]], rest: list[int], device: torch.device) -> None:
        self.groups = groups
        self.rest = rest
        order = [i for group in groups for i in group] + rest
        self.inverse: Tensor | None = None
        if order != list(range(len(order))):
            self.inverse = torch.empty(len(order), dtype=torch.long)
            self.inverse[torch.tensor(order)] = torch.arange(len(order))
            self.inverse = self.inverse.to(device)

    @classmethod
    def of(cls, tensors: list[Tensor]) -> Layout | None:
        """The layout of ``tensors``; None when they are on several devices, sparse or
        empty (then each is reduced on its own)."""
        if not tensors:
            return None
        device = tensors[0].device
        keyed: dict[tuple, list[int]] = {}
        rest = []
        for i, t in enumerate(tensors):
            if t.device != device or t.layout is not torch.strided:
                return None
            if t.numel() <= STACK_MAX:
                keyed.setdefault((tuple(t.shape), t.dtype), []).append(i)
            else:
                rest.append(i)
        groups = [idx for idx in keyed.values() if len(idx) > 1]
        rest += [idx[0] for idx in keyed.values() if len(idx) == 1]
        return cls(groups, sorted(rest), device)

    def stack(self, tensors: list[Tensor]) -> list[Tensor]:
        """One stacked copy of each group's tensors (shape: group size x tensor shape)."""
        return [torch.stack([tensors[i] for i in group]) for group in self.groups]

    def in_order(self, parts: list[Tensor]) -> Tensor:
        """Per-group results then the others', concatenated and put back in list order."""
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out if self.inverse is None else out.index_select(0, self.inverse)

    def norms(
        self,
        tensors: list[Tensor],
        order: int,
        sample: int | None = None,
        stacks: list[Tensor] | None = None,
    ) -> Tensor:
        """L1/L2 norm of each tensor (of its first ``sample`` entries, scaled up to the
        whole tensor, for the large ones), in list order: a 1-D tensor, or a list of
        scalars when no tensors share a shape (one foreach call then)."""
        if not self.groups:
            return _norms(tensors, order, None, sample)
        stacks = self.stack(tensors) if stacks is None else stacks
        parts = [_group_norms(s, order) for s in stacks]
        if self.rest:
            parts.append(torch.stack(_norms([tensors[i] for i in self.rest], order, None, sample)))
        return self.in_order(parts)


def _group_norms(stacked: Tensor, order: int, dtype: torch.dtype | None = None) -> Tensor:
    flat = stacked.reshape(stacked.shape[0], -1)
    return torch.linalg.vector_norm(flat, order, dim=1, dtype=dtype)


Snapshot = tuple[list[Tensor], list[Tensor]]


def snapshot(
    params: list[Tensor],
    sample: int | None = UPDATE_SAMPLE,
    layout: Layout | None = None,
    stacks: list[Tensor] | None = None,
) -> Snapshot:
    """Copies of (the first ``sample`` entries of) each parameter, taken before a step:
    the layout's stacked groups (``stacks`` when already made: they are copies), and the
    heads of the other parameters.

    A fixed slice keeps the cost flat however large the model; the update-to-weight
    ratio it gives is exact for tensors up to ``sample`` entries and an unbiased-scale
    estimate beyond (see :func:`update_norms`).  ``sample=None`` copies everything.
    """
    rest = params if layout is None else [params[i] for i in layout.rest]
    groups = [] if layout is None else layout.stack(params) if stacks is None else stacks
    # x * 1 is an exact copy (NaN, Inf and -0.0 included), for all tensors in one call.
    return groups, list(torch._foreach_mul([_head(p, sample) for p in rest], 1)) if rest else []


def _head(p: Tensor, sample: int | None) -> Tensor:
    """The first ``sample`` entries of ``p`` (``p`` itself when it has no more)."""
    if sample is None or p.numel() <= sample:
        return p
    return p.reshape(-1)[:sample]


def update_norms(
    params: list[Tensor],
    before: Snapshot,
    sample: int | None = UPDATE_SAMPLE,
    layout: Layout | None = None,
) -> Tensor | list[Tensor]:
    """L2 norm of (after - before) on each sampled slice, scaled up to the whole tensor."""
    groups, heads_before = before
    rest = params if layout is None else [params[i] for i in layout.rest]
    norms: list[Tensor] = []
    if rest:
        heads = [_head(p, sample) for p in rest]
        norms = list(torch._foreach_norm(torch._foreach_sub(heads, heads_before), 2))
        norms = _scaled_to_whole(norms, rest, heads, 2)
    if layout is None:
        return norms
    after = layout.stack(params)
    parts = [_group_norms(a - b, 2) for a, b in zip(after, groups, strict=True)]
    return layout.in_order(parts + ([torch.stack(norms)] if norms else []))


#: The corner of each weight matrix whose rows are compared by :func:`row_spread`.
ROW_SPREAD_ROWS = 1024
ROW_SPREAD_COLUMNS = 256

_PROBES: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}


def _probe(columns: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    key = (columns, device, dtype)
    probe = _PROBES.get(key)
    if probe is None:
        g = torch.Generator().manual_seed(columns)
        probe = torch.randn(columns, generator=g).to(device, dtype)
        probe = probe / probe.norm()
        _PROBES[key] = probe
    return probe


def row_spread(weights: list[Tensor]) -> list[Tensor]:
    """How different the rows (output units) of each weight matrix are; 0 when all are equal.

    Projects (a corner of) each matrix on a fixed random unit vector (one matrix-vector
    product, no copy) and takes the standard deviation across rows: identical rows give
    identical values; random rows give about the weights' standard deviation.
    """
    out = []
    for w in weights:
        # Identical rows are identical on any block of columns: a corner is enough.
        flat = w.detach() if w.requires_grad and torch.is_grad_enabled() else w
        flat = flat if flat.dim() == 2 else flat.flatten(1)
        if flat.shape[0] > ROW_SPREAD_ROWS or flat.shape[1] > ROW_SPREAD_COLUMNS:
            flat = flat[:ROW_SPREAD_ROWS, :ROW_SPREAD_COLUMNS]
        probe = _probe(flat.shape[1], flat.device, flat.dtype)
        out.append((flat @ probe).std() if flat.shape[0] > 1 else flat.new_zeros(()))
    return out


def stacked_row_spread(stacked: Tensor) -> Tensor:
    """:func:`row_spread` of each matrix of a stack of same-shaped matrices, in one call."""
    flat = stacked.detach().flatten(2)[:, :ROW_SPREAD_ROWS, :ROW_SPREAD_COLUMNS]
    if flat.shape[1] < 2:
        return flat.new_zeros(flat.shape[0])
    return (flat @ _probe(flat.shape[2], flat.device, flat.dtype)).std(dim=1)


#: Two rows closer than this fraction of the rows' RMS norm are copies (float32 rounding
#: apart), as docs/definitions.md counts identical rows.
TWIN_TOLERANCE = 1e-6


def row_twins(weights: list[Tensor]) -> list[Tensor]:
    """The fraction of each weight matrix's rows (of its corner, as :func:`row_spread`)
    that are a copy of another row: units that compute the same thing.

    Copies project to the same value on a fixed random unit vector, so sorting the rows
    by their projection puts copies next to each other; a row counts when it lies within
    :data:`TWIN_TOLERANCE` of the rows' RMS norm of a neighbour in that order (a
    distance, so rows that merely project alike do not count).  Unlike the spread, this
    sees copies in groups (a GRU's rows, identical within each gate but not across
    gates)."""
    return [stacked_row_twins(w.detach().flatten(1).unsqueeze(0))[0] for w in weights]


def stacked_row_twins(stacked: Tensor) -> Tensor:
    """:func:`row_twins` of each matrix of a stack of same-shaped matrices, in one call."""
    flat = stacked.detach().flatten(2)[:, :ROW_SPREAD_ROWS, :ROW_SPREAD_COLUMNS]
    if flat.shape[1] < 2:
        return flat.new_zeros(flat.shape[0])
    order = (flat @ _probe(flat.shape[2], flat.device, flat.dtype)).argsort(dim=1)
    rows = flat.gather(1, order.unsqueeze(2).expand_as(flat))
    # The rows' RMS norm, not the largest: one row blown up must not make the rest copies.
    tolerance = TWIN_TOLERANCE * flat.norm(dim=2).square().mean(dim=1, keepdim=True).sqrt()
    close = (rows[:, 1:] - rows[:, :-1]).norm(dim=2) <= tolerance
    twin = torch.zeros(order.shape, dtype=torch.bool, device=flat.device)
    twin[:, 1:] |= close
    twin[:, :-1] |= close
    return twin.to(flat.dtype).mean(dim=1)


def to_host(tensors: list[Tensor]) -> list[float]:
    """Bring a list of scalar or 1-D tensors to the host with one synchronisation per
    device; returns their values in order, flattened."""
    if not tensors:
        return []
    if all(t.is_cpu for t in tensors):
        return _read_cpu(tensors)
    try:
        # The common case: one device.  Mixed dtypes promote (float32 holds counts exactly
        # up to 2**24); mixed devices raise and take the slow path.
        if len(tensors) == 1:
            return tensors[0].reshape(-1).tolist()
        if tensors[0].dim() == 0:  # usually all scalars (else the next try)
            return torch.stack(tensors).reshape(-1).tolist()
    except RuntimeError:
        pass
    try:
        return torch.cat([t.reshape(-1) for t in tensors]).tolist()
    except RuntimeError:
        pass
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    by_device: dict[torch.device, tuple[list[int], list[Tensor]]] = {}
    for (device, _dtype), idx in groups.items():
        order, stacks = by_device.setdefault(device, ([], []))
        order.extend(idx)
        stacks.append(torch.cat([tensors[i].reshape(-1) for i in idx]).to(torch.float64))
    sizes = [t.numel() for t in tensors]
    values: list[list[float]] = [[] for _ in tensors]
    for order, stacks in by_device.values():
        flat = torch.cat(stacks).tolist() if len(stacks) > 1 else stacks[0].tolist()
        k = 0
        for i in order:
            values[i] = flat[k : k + sizes[i]]
            k += sizes[i]
    return [v for part in values for v in part]


def _read_cpu(tensors: list[Tensor]) -> list[float]:
    """CPU tensors' values: there is no device to wait for, and reading each scalar
    (a few hundred nanoseconds) is cheaper than stacking them first (an allocation and
    a copy kernel, ~20 us in a training step)."""
    out: list[float] = []
    for t in tensors:
        if t.dim() == 0:
            v = t.tolist()
            out.append(v if type(v) is float else float(v))
        elif t.is_floating_point():
            out.extend(t.reshape(-1).tolist())
        else:
            out.extend(float(v) for v in t.reshape(-1).tolist())
    return out


#: One module call of a forward (or of its replay), in the order calls completed: (module
#: index, whether its output held NaN/Inf, whether its input did); None: no float tensor.
ModuleCall = tuple[int, "bool | None", "bool | None"]


def call_flags(calls: list[tuple[int, Tensor | None, Tensor | None]]) -> list[ModuleCall]:
    """(module, output, input) per call, tensors on the device, to the host as whether each
    held NaN/Inf: one reduction per tensor and one synchronisation."""
    measured = [t for _, out, given in calls for t in (out, given) if t is not None]
    host = iter(to_host([nonfinite_flag(t) for t in measured]))
    return [
        (j, *(None if t is None else not math.isfinite(next(host)) for t in (out, given)))
        for j, out, given in calls
    ]


def nonfinite_by_module(calls: list[ModuleCall]) -> dict[str, dict[int, float]]:
    """A forward's calls summed up per module, in the record's columns.

    ``nonfinite``: 1 when some call's output held NaN/Inf.  ``input_nonfinite``: whether
    the input was non-finite *on the module's first call with a non-finite output* (any
    call's, for a module whose outputs stayed finite).  ``nonfinite_order``: when that
    call completed, counted in calls; for a module whose outputs stayed finite, its last
    call before the first non-finite output anywhere (absent when it ran only after it).
    A module called twice in one forward (one dropout after attention and after the MLP)
    is thus placed at the call that went wrong, not at its first call."""
    outputs: dict[int, float] = {}
    inputs: dict[int, float] = {}
    order: dict[int, float] = {}
    first_bad = next((k for k, (_, out, _) in enumerate(calls) if out), len(calls))
    for k, (j, out, given) in enumerate(calls):
        if out is not None:
            already = outputs.get(j) == 1.0
            outputs[j] = 1.0 if out or already else 0.0
            if out and not already:
                order[j] = float(k)
                inputs[j] = 1.0 if given else 0.0
                continue
            if not already and k < first_bad:
                order[j] = float(k)
        if given is not None and outputs.get(j) != 1.0:
            inputs[j] = 1.0 if given or inputs.get(j) == 1.0 else 0.0
    return {"nonfinite": outputs, "input_nonfinite": inputs, "nonfinite_order": order}

"""What a constant prediction would score: the yardstick of "the model learned nothing".

A loss that fell a long way can still be no better than predicting the same output for
every input (a model that only learned its output bias, from a bad start).  When the
loss is logged before ``backward()``, its autograd graph still holds the loss function's
inputs; for the common losses (cross-entropy / NLL, binary cross-entropy with or without
logits, mean squared error, the multi-class hinge, L1 on the model's output, the triplet
margin loss) this module reads the prediction and the targets there and computes,
without a host sync:

* the loss term itself, recomputed as a mean over the batch (so a scale, a sum or a
  ``reduction="none"`` followed by ``.mean()`` does not matter), and
* the loss the best constant prediction gets on the targets of every step so far (class
  frequencies, per-feature means and variances, pooled on light steps too by
  :meth:`ConstantLoss.pool_targets`: a few measured batches alone misjudge it by a few
  percent); for L1 (its best constant is a median) on the measured batches' target rows.

A sum of two binary cross-entropy terms (a GAN discriminator's loss on real and on
generated samples, ``bce(D(x), 1) + bce(D(G(z)), 0)``) is measured jointly: the best
constant scores every sample alike in both terms (2 ln 2 for that loss, what a guessing
discriminator gets).  Any other graph (a sum of other losses, a custom loss) is not
recognised and nothing is measured: the detectors then judge harm from the loss trend
alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: Autograd nodes a loss may pass through on its way to the logged value (scaling,
#: casting, reducing per-sample losses); the walk follows them to the loss function.
PASS_THROUGH = frozenset(
    {
        "MulBackward0",
        "DivBackward0",
        "NegBackward0",
        "ToCopyBackward0",
        "MeanBackward0",
        "SumBackward0",
        "MeanBackward1",
        "SumBackward1",
    }
)
#: How far the walk goes before giving up.
_MAX_HOPS = 8
#: The multi-class hinge's best constant is searched on a grid up to this many classes.
_HINGE_GRID_CLASSES = 6
#: Beyond this many classes the hinge's constant is not searched (candidates x C x C).
_HINGE_MAX_CLASSES = 64
_EPS = 1e-6
#: Light steps' target entries held before they are pooled at once (about 32 MB of int64).
MAX_HELD = 1 << 22
#: Target entries of measured batches an L1 loss's pool keeps (4 MB of float32).
MAX_POOLED_ROWS_ENTRIES = 1 << 20
#: What a light step holds: (pool key, the totals of a batch's targets, the targets).
_Held = tuple[tuple, Callable[..., list[Tensor]], tuple[Tensor, ...]]


def _saved(node: Any, name: str) -> Any:
    return getattr(node, f"_saved_{name}", None)


def node_past(loss: Tensor, passing: frozenset[str] = PASS_THROUGH) -> Any | None:
    """The first autograd node behind ``loss`` that is not one of ``passing`` (scaling,
    casting, reducing: one input each), or None when the graph is gone (logged after
    ``backward()``), a passing node has several inputs, or the walk is too long."""
    return walk_past(loss.grad_fn, passing)


def walk_past(node: Any, passing: frozenset[str] = PASS_THROUGH) -> Any | None:
    """:func:`node_past` from an autograd node rather than a tensor."""
    for _ in range(_MAX_HOPS):
        if node is None or node.name() not in passing:
            return node
        inputs = [f for f, _ in node.next_functions if f is not None]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


def recognised(node: Any) -> bool:
    """Whether ``node`` is the node of a loss function this module measures (a clamp at 0
    only when it has the triplet margin loss's shape: other clamped losses are not)."""
    if node is None or node.name() not in _MEASURES:
        return False
    return node.name() != "ClampMinBackward0" or _triplet_distances(node) is not None


def loss_node(loss: Tensor) -> Any | None:
    """The autograd node of the loss function behind ``loss``, or None when the graph is
    gone (logged after ``backward()``) or is not a single recognised loss."""
    node = node_past(loss)
    return node if recognised(node) else None


class ConstantLoss:
    """Pools the targets of every measured step and compares each step's loss term with
    the best constant prediction's (see the module docstring)."""

    def __init__(self) -> None:
        self._pools: dict[tuple, list[Tensor]] = {}
        #: Target rows of the measured batches, for losses without running totals (L1).
        self._rows: dict[tuple, list[Tensor]] = {}
        #: Light steps' targets, held (no tensor operation on a light step) until the next
        #: measured step pools them: (pool key, totals function, targets, their versions).
        self._held: list[tuple[tuple, Callable[..., list[Tensor]], tuple, tuple]] = []
        self._held_numel = 0
        #: The step's outputs an L1 loss's prediction may be (the output module's, and what
        #: the watched model returned): its targets are read off the one it is.
        self.outputs: tuple[Tensor | None, ...] = ()

    def measure(
        self, loss: Tensor, output: Tensor | None = None, model_output: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """(the loss term, the best constant's loss) as 0-dim float tensors on the loss's
        device, or None when the loss function is not recognised or its graph is gone.
        ``output`` is the output module's output this step and ``model_output`` what the
        model returned (they differ when the forward adds to the last module's output): an
        L1 loss keeps only the residual, so its targets are read as the prediction minus
        the residual when the prediction is one of them."""
        node = loss_node(loss)
        terms = binary_terms(loss) if node is None else None
        if node is None and terms is None:
            return None
        self.outputs = (output, model_output)
        try:
            with torch.no_grad():
                self._pool_held()
                if terms is not None:
                    return _binary_sum(self, terms)
                return _MEASURES[node.name()](self, node)
        except (RuntimeError, TypeError, ValueError, IndexError):
            return None  # freed saved tensors, odd shapes: not measured, never a crash

    def pool_targets(self, loss: Tensor) -> None:
        """Keep this step's targets for the pool and nothing else (a light step): the best
        constant is then the one for every batch the run trained on, not only for the
        batches of the measured steps.  No tensor operation runs here: the targets are
        held and pooled at the next measured step (at once if more than
        :data:`MAX_HELD` entries wait), unless they were changed in place meanwhile."""
        node = loss_node(loss)
        try:
            if node is None:
                held = [_summand_held(n, i) for i, n in enumerate(binary_terms(loss) or ())]
            else:
                holder = _HOLDERS.get(node.name())
                held = [holder(node)] if holder is not None else []
        except (RuntimeError, TypeError, ValueError, IndexError):
            return  # freed saved tensors, odd shapes: not pooled, never a crash
        for key, totals, targets in (h for h in held if h is not None):
            self._held.append((key, totals, targets, tuple(t._version for t in targets)))
            self._held_numel += sum(t.numel() for t in targets)
        if self._held_numel > MAX_HELD:
            with torch.no_grad():
                self._pool_held()

    def _pool_held(self) -> None:
        """Pool the held targets: those of one pool key and shape in one call."""
        held, self._held, self._held_numel = self._held, [], 0
        groups: dict[tuple, tuple[Callable[..., list[Tensor]], list[Tensor]]] = {}
        for key, totals, (target,), (version,) in held:
            if target._version == version:  # not changed in place since
                group = (key, tuple(target.shape[1:]), target.device, target.dtype)
                groups.setdefault(group, (totals, []))[1].append(target)
        for (key, *_), (totals, targets) in groups.items():
            self.pool(key, *totals(targets[0] if len(targets) == 1 else torch.cat(targets)))

    def pool_rows(self, key: tuple, rows: Tensor) -> Tensor:
        """Add a measured batch's target rows to the pool of rows under ``key`` (while it
        holds fewer than :data:`MAX_POOLED_ROWS_ENTRIES` entries) and return the pool."""
        kept = self._rows.setdefault(key, [])
        if sum(r.numel() for r in kept) + rows.numel() <= MAX_POOLED_ROWS_ENTRIES or not kept:
            kept.append(rows.clone())
        return kept[0] if len(kept) == 1 else torch.cat(kept)

    def pool(self, key: tuple, *totals: Tensor) -> list[Tensor]:
        """Add this step's target totals to the pool under ``key`` and return the pool."""
        pooled = self._pools.get(key)
        if pooled is None:
            pooled = self._pools[key] = [t.clone() for t in totals]
        else:
            for acc, t in zip(pooled, totals, strict=True):
                acc.add_(t)
        return pooled


def _class_counts(target: Tensor, weight: Tensor, n_classes: int) -> Tensor:
    """How often each class occurs among the counted targets (no one-hot: a language
    model's vocabulary times its tokens would not fit)."""
    counts = torch.zeros(n_classes, device=target.device, dtype=torch.float32)
    return counts.scatter_add_(0, target.reshape(-1), weight.reshape(-1))


def _nll_parts(node: Any) -> tuple[Tensor, Tensor, Tensor, tuple] | None:
    """(log-probabilities, targets, target weights, pool key) of an NLL/CE node."""
    if _saved(node, "weight") is not None:
        return None  # class weights change what the best constant is
    logp, target = _saved(node, "self"), _saved(node, "target")
    if logp.dim() == 1:
        logp, target = logp.unsqueeze(0), target.reshape(1)
    n_classes = logp.shape[1]
    ignore = _saved(node, "ignore_index")
    weight = (target != ignore).float() if ignore is not None else torch.ones_like(target).float()
    return logp, target.clamp(0, n_classes - 1), weight, ("nll", n_classes)


def _nll_held(node: Any) -> _Held | None:
    if _saved(node, "weight") is not None:
        return None
    scores, target = _saved(node, "self"), _saved(node, "target")
    n_classes = scores.shape[0] if scores.dim() == 1 else scores.shape[1]
    ignore = _saved(node, "ignore_index")

    def totals(target: Tensor) -> list[Tensor]:
        weight = (target != ignore).float() if ignore is not None else target.new_ones(())
        weight = weight.expand_as(target).float()
        return [_class_counts(target.clamp(0, n_classes - 1), weight, n_classes)]

    return ("nll", n_classes), totals, (target,)


def _nll(meter: ConstantLoss, node: Any) -> tuple[Tensor, Tensor] | None:
    parts = _nll_parts(node)
    if parts is None:
        return None
    logp, target, weight, key = parts
    picked = logp.gather(1, target.unsqueeze(1)).squeeze(1).float()  # no copy of the scores
    term = -(picked * weight).sum() / weight.sum().clamp(min=1.0)
    (pooled,) = meter.pool(key, _class_counts(target, weight, logp.shape[1]))
    freq = pooled / pooled.sum().clamp(min=1.0)
    return term, -(freq * freq.clamp(min=_EPS).log()).sum()  # the pool's entropy


def _binary_held(node: Any) -> _Held | None:
    if _saved(node, "weight") is not None or _saved(node, "pos_weight") is not None:
        return None
    target = _saved(node, "target")
    if target.dim() == 0:
        return None
    return ("bce", tuple(target.shape[1:])), _sum_and_count, (target,)


def _sum_and_count(target: Tensor) -> list[Tensor]:
    target = target.float()
    return [target.sum(0), torch.tensor(float(target.shape[0]), device=target.device)]


def _binary(meter: ConstantLoss, node: Any, logits: bool) -> tuple[Tensor, Tensor] | None:
    held = _binary_held(node)
    if held is None:
        return None
    pred, target = _saved(node, "self").float(), _saved(node, "target").float()
    if logits:
        term = F.binary_cross_entropy_with_logits(pred, target)
    else:
        term = F.binary_cross_entropy(pred.clamp(_EPS, 1 - _EPS), target)
    total, count = meter.pool(held[0], *_sum_and_count(target))
    p = (total / count).clamp(_EPS, 1 - _EPS)
    return term, -(p * p.log() + (1 - p) * (1 - p).log()).mean()  # the pool's entropy


_BINARY = frozenset({"BinaryCrossEntropyBackward0", "BinaryCrossEntropyWithLogitsBackward0"})


def binary_terms(loss: Tensor) -> list[Any] | None:
    """The two binary cross-entropy nodes (no class weights) of a loss that is their sum,
    perhaps scaled (a GAN discriminator's real and fake terms), else None."""
    node = node_past(loss)
    if node is None or node.name() != "AddBackward0":
        return None
    terms = [f for f, _ in node.next_functions if f is not None]
    if len(terms) != 2 or any(t.name() not in _BINARY for t in terms):
        return None
    return terms if all(_binary_held(t) is not None for t in terms) else None


def _summand_held(node: Any, index: int) -> _Held | None:
    """What a light step holds for the ``index``-th term of a sum: pooled apart."""
    held = _binary_held(node)
    return None if held is None else (("bce_sum", index, *held[0][1:]), *held[1:])


def _binary_sum(meter: ConstantLoss, nodes: list[Any]) -> tuple[Tensor, Tensor]:
    """(the summed terms, the best constant's loss) for :func:`binary_terms`: one output
    ``p`` for every sample of both terms, at its best the mean of the terms' target means
    (0.5 for real = 1 and fake = 0), scoring the sum of the terms' cross-entropies."""
    terms, means = [], []
    for index, node in enumerate(nodes):
        pred, target = _saved(node, "self").float(), _saved(node, "target").float()
        if node.name() == "BinaryCrossEntropyWithLogitsBackward0":
            terms.append(F.binary_cross_entropy_with_logits(pred, target))
        else:
            terms.append(F.binary_cross_entropy(pred.clamp(_EPS, 1 - _EPS), target))
        key = ("bce_sum", index, tuple(target.shape[1:]))
        total, count = meter.pool(key, *_sum_and_count(target))
        means.append(total / count)
    p = torch.stack(means).mean(0).clamp(_EPS, 1 - _EPS)
    constant = sum(-(m * p.log() + (1 - m) * (1 - p).log()).mean() for m in means)
    return terms[0] + terms[1], constant


def _mse_held(node: Any) -> _Held | None:
    pred, target = _saved(node, "self"), _saved(node, "target")
    if pred.shape != target.shape or pred.dim() == 0:
        return None
    return ("mse", tuple(target.shape[1:])), _moments, (target,)


def _moments(target: Tensor) -> list[Tensor]:
    target = target.float()
    count = torch.tensor(float(target.shape[0]), device=target.device)
    return [target.sum(0), target.square().sum(0), count]


def _mse(meter: ConstantLoss, node: Any) -> tuple[Tensor, Tensor] | None:
    held = _mse_held(node)
    if held is None:
        return None
    pred, target = _saved(node, "self").float(), _saved(node, "target").float()
    total, squares, count = meter.pool(held[0], *_moments(target))
    mean = total / count
    variance = (squares / count - mean.square()).clamp(min=0.0)
    return F.mse_loss(pred, target), variance.mean()  # the pool's variance


def _hinge_held(node: Any) -> _Held | None:
    if _saved(node, "weight") is not None or int(_saved(node, "p") or 1) != 1:
        return None
    scores, target = _saved(node, "self"), _saved(node, "target")
    if scores.dim() != 2 or scores.shape[1] > _HINGE_MAX_CLASSES:
        return None
    n_classes, margin = scores.shape[1], float(_saved(node, "margin") or 1.0)

    def totals(target: Tensor) -> list[Tensor]:
        target = target.reshape(-1)
        return [_class_counts(target, torch.ones_like(target).float(), n_classes)]

    return ("hinge", n_classes, margin), totals, (target,)


def _hinge(meter: ConstantLoss, node: Any) -> tuple[Tensor, Tensor] | None:
    held = _hinge_held(node)
    if held is None:
        return None
    key, totals, (target,) = held
    scores, margin = _saved(node, "self").float(), key[2]
    term = F.multi_margin_loss(scores, target.reshape(-1), margin=margin)
    (pooled,) = meter.pool(key, *totals(target))
    freq = pooled / pooled.sum().clamp(min=1.0)
    return term, _best_hinge_loss(freq, margin)


def _hinge_grid(n: int, margin: float, device: torch.device) -> Tensor:
    """Candidate outputs for the multi-class hinge's best constant: every vector of
    ``{0, m, 2m, 3m}`` per class (the loss is piecewise linear with kinks at multiples of
    the margin) for a few classes; else all-equal, or a margin on one class."""
    key = (n, margin, str(device))
    grid = _GRIDS.get(key)
    if grid is None:
        if n <= _HINGE_GRID_CLASSES:
            levels = torch.arange(4.0, device=device) * margin
            grid = torch.cartesian_prod(*[levels] * n).reshape(-1, n)
        else:
            eye = torch.eye(n, device=device) * margin
            grid = torch.cat([torch.zeros(1, n, device=device), eye])
        _GRIDS[key] = grid
    return grid


def _best_hinge_loss(freq: Tensor, margin: float) -> Tensor:
    """The lowest mean multi-class hinge a constant output scores on targets of class
    frequencies ``freq``, among :func:`_hinge_grid`'s candidates."""
    n = freq.numel()
    grid = _hinge_grid(n, margin, freq.device)
    # loss(c) = sum_y f_y * sum_{j != y} max(0, m - c_y + c_j) / n; the j == y term is m.
    gaps = (margin - grid[:, :, None] + grid[:, None, :]).clamp(min=0)  # [candidate, y, j]
    return ((gaps.sum(2) - margin) * freq).sum(1).min() / n


_GRIDS: dict[tuple, Tensor] = {}
def _l1(meter: ConstantLoss, node: Any) -> tuple[Tensor, Tensor] | None:
    """``l1_loss`` is ``mean(abs(prediction - target))`` in the graph: the residual is saved,
    the target is recovered when the prediction is the model's output itself."""
    sub = node.next_functions[0][0] if node.next_functions else None
    if sub is None or sub.name() != "SubBackward0":
        return None
    (first, _), (second, _) = sub.next_functions[:2]
    if first is not None and first.name() == "ToCopyBackward0":
        first = first.next_functions[0][0]  # autocast ran l1_loss in float32
    output = next((o for o in meter.outputs if o is not None and o.grad_fn is first), None)
    if output is None or first is None or second is not None:
        return None  # the prediction is not an output as it is, or the target is learned
    residual = _saved(node, "self").float()
    if residual.shape != output.shape or residual.dim() == 0:
        return None
    target = output.detach().float() - residual
    pooled = meter.pool_rows(("l1", tuple(target.shape[1:])), target)
    # The loss of the pool's best constant (its per-feature median) over the pool: one
    # batch's own median would flatter the constant on every batch.
    return residual.abs().mean(), (pooled - pooled.median(dim=0).values).abs().mean()


def _triplet_distances(node: Any) -> tuple[Any, Any] | None:
    """The nodes of d(a, p) and d(a, n) when ``node`` is ``triplet_margin_loss``'s (no
    swap): ``clamp_min(margin + d(a, p) - d(a, n), 0)``; None for any other clamp."""
    sub = node.next_functions[0][0] if node.next_functions else None
    if float(_saved(node, "min") or 0) != 0 or sub is None or sub.name() != "SubBackward0":
        return None
    (add, _), (negative, _) = sub.next_functions[:2]
    positive = add.next_functions[0][0] if add is not None and add.next_functions else None
    expected = ((add, "AddBackward1"), (positive, "NormBackward1"), (negative, "NormBackward1"))
    if not all(n is not None and n.name() == want for n, want in expected):
        return None
    return positive, negative


def _triplet(meter: ConstantLoss, node: Any) -> tuple[Tensor, Tensor] | None:
    """``triplet_margin_loss`` (no swap): a constant embedding puts every sample at distance
    ~0 from every other, so its loss is the margin, read back from the saved hinge input
    and the two distances."""
    distances = _triplet_distances(node)
    if distances is None:
        return None  # another clamped loss: not recognised
    positive, negative = distances
    hinge = _saved(node, "self").float()
    margin = hinge - _saved(positive, "result").float() + _saved(negative, "result").float()
    return hinge.clamp(min=0.0).mean(), margin.mean()


#: What a light step holds for the pools, per loss node: (pool key, the totals of a
#: batch's targets, the targets); L1 pools its measured batches' target rows instead (its
#: best constant, a median, has no running totals; a light step cannot see the targets).
_HOLDERS: dict[str, Callable[[Any], _Held | None]] = {
    "NllLossBackward0": _nll_held,
    "NllLoss2DBackward0": _nll_held,
    "BinaryCrossEntropyWithLogitsBackward0": _binary_held,
    "BinaryCrossEntropyBackward0": _binary_held,
    "MseLossBackward0": _mse_held,
    "MultiMarginLossBackward0": _hinge_held,
}

_MEASURES: dict[str, Callable[[ConstantLoss, Any], tuple[Tensor, Tensor] | None]] = {
    "NllLossBackward0": _nll,
    "NllLoss2DBackward0": _nll,
    "BinaryCrossEntropyWithLogitsBackward0": lambda m, n: _binary(m, n, logits=True),
    "BinaryCrossEntropyBackward0": lambda m, n: _binary(m, n, logits=False),
    "MseLossBackward0": _mse,
    "MultiMarginLossBackward0": _hinge,
    "AbsBackward0": _l1,
    "ClampMinBackward0": _triplet,
}

"""Whether the loss function got the kind of input it expects.

Three mistakes make a model train slowly or not at all while every gradient statistic
looks ordinary, and each shows in the logged loss's autograd graph (a detail step, the
loss logged before ``backward()``):

* ``cross_entropy`` on probabilities (a softmax already applied): cross-entropy applies
  ``log_softmax`` itself, so the scores it sees span at most 1 and the model can never
  be confident (with 10 classes its best prediction of the right class is ~0.23);
* ``binary_cross_entropy_with_logits`` on a sigmoid's output: the "logits" lie in (0, 1),
  so the predicted probability stays between 0.5 and 0.73;
* ``nll_loss`` on scores that are not log-probabilities (``log_softmax`` forgotten): the
  loss is unbounded below and training drives the scores to minus infinity;
* ``mse_loss`` on a prediction and a target of different shapes (``(N, 1)`` against
  ``(N,)``): both are broadcast to ``(N, N)``, every prediction is compared with every
  target, and the best the model can do is predict their mean (PyTorch warns once).
  Seen as a target that was broadcast too (a zero stride): one prediction per sample
  expanded over several targets of that sample (``v.expand_as(returns)``, or ``(N, 1)``
  against ``(N, T)``) compares each sample with its own targets and is fine.

:func:`faults` returns a code (:data:`FINE` or one of the four) per loss function the
logged loss is made of (a sum of weighted terms is checked term by term), each a 0-dim
tensor on the loss's device, without a host sync; :func:`made_by` names the module whose
output a term was given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradscope.constant_loss import loss_node, recognised, walk_past

FINE = 0.0
SOFTMAX_INTO_CROSS_ENTROPY = 1.0
SIGMOID_INTO_BCE_WITH_LOGITS = 2.0
NLL_WITHOUT_LOG_SOFTMAX = 3.0
BROADCAST_IN_MSE = 4.0

#: Nodes that only reshape, move or cast a tensor: the walk to its producer skips them.
_SHAPE_ONLY = frozenset(
    {
        "ViewBackward0",
        "ReshapeAliasBackward0",
        "UnsafeViewBackward0",
        "TransposeBackward0",
        "PermuteBackward0",
        "ToCopyBackward0",
        "CloneBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "UnsqueezeBackward0",
        "ExpandBackward0",
    }
)
#: Log-probability rows have logsumexp 0; a row further from it than this is not one.
_NOT_LOG_PROBABILITIES = 0.05
#: ...and the loss counts as fed with non-log-probabilities when this share of rows is.
_ROWS = 0.5


def _producer(node: Any) -> Any | None:
    """The node that made ``node``'s first input, past reshapes, moves and casts."""
    for _ in range(8):
        inputs = [f for f, _ in node.next_functions if f is not None]
        if not inputs:
            return None
        node = inputs[0]
        if node.name() not in _SHAPE_ONLY:
            return node
    return None


def _named(node: Any | None, name: str) -> bool:
    return node is not None and node.name() == name


#: Nodes that add or subtract terms: a loss made of several (``ce + 0.5 * mse``, an
#: actor-critic's policy and value losses) is checked term by term.
_SUMS = frozenset({"AddBackward0", "SubBackward0"})
#: Terms of a summed loss that are looked at, at most.
_MAX_TERMS = 8


def faults(loss: Tensor) -> list[tuple[Tensor, Any]]:
    """(code of the mistake, the loss function's node) for each recognised term of the
    loss (see the module docstring and :func:`loss_terms`); empty when none is."""
    out = []
    for node in loss_terms(loss):
        try:
            out.append((_judge(node, loss), node))
        except (RuntimeError, TypeError, AttributeError):
            continue  # freed saved tensors, odd shapes: not measured, never a crash
    return out


def fault(loss: Tensor) -> Tensor | None:
    """The code of the mistake the loss's graph shows: the first term's that shows one
    (:data:`FINE` when none does), None when no term is a recognised loss function.  One
    host read when the loss has several terms."""
    codes = [code for code, _ in faults(loss)]
    if len(codes) <= 1:
        return codes[0] if codes else None
    return next((code for code in codes if float(code) != FINE), codes[0])


def made_by(node: Any, outputs: dict[int, int], hops: int = 8) -> int | None:
    """The module whose output a loss function's prediction came from: down the node's
    first input (through a softmax, a sigmoid, a reshape) to the first node that made a
    module's output this step (``outputs``: id of an output's ``grad_fn`` -> module; the
    loss's graph holds its nodes, so their ids are theirs while it is walked)."""
    for _ in range(hops):
        inputs = [f for f, _ in node.next_functions] if node is not None else []
        node = inputs[0] if inputs else None
        if node is None:
            return None
        if id(node) in outputs:
            return outputs[id(node)]
    return None


def loss_terms(loss: Tensor) -> list[Any]:
    """The recognised loss functions' nodes behind ``loss``: one for a single loss, each
    term's for a sum of weighted terms (in graph order, at most :data:`_MAX_TERMS`)."""
    node = loss_node(loss)
    if node is not None:
        return [node]
    found: list[Any] = []
    todo, hops = [loss.grad_fn], 0
    while todo and len(found) < _MAX_TERMS and hops < 4 * _MAX_TERMS:
        hops += 1
        current = walk_past(todo.pop(0))
        if current is None:
            continue
        if current.name() in _SUMS:
            todo += [f for f, _ in current.next_functions if f is not None]
        elif recognised(current):
            found.append(current)
    return found


def _judge(node: Any, loss: Tensor) -> Tensor:
    name = node.name()
    code = FINE
    if name == "NllLossBackward0":
        before = _producer(node)
        if _named(before, "LogSoftmaxBackward0"):
            if _named(_producer(before), "SoftmaxBackward0"):
                code = SOFTMAX_INTO_CROSS_ENTROPY
        else:
            return _log_probability_check(node, loss)
    elif name == "MseLossBackward0":
        given = [f for f, _ in node.next_functions if f is not None]
        if given and given[0].name() == "ExpandBackward0" and _broadcast(node._saved_target):
            code = BROADCAST_IN_MSE  # prediction and target broadcast against each other
    elif name == "BinaryCrossEntropyWithLogitsBackward0" and _named(
        _producer(node), "SigmoidBackward0"
    ):
        code = SIGMOID_INTO_BCE_WITH_LOGITS
    return loss.new_tensor(code, dtype=torch.float32)


def _broadcast(target: Tensor) -> bool:
    """Whether a loss's target was expanded over a dimension (a zero stride there): mse_loss
    broadcast it against a prediction of another shape, so samples meet other samples."""
    pairs = zip(target.shape, target.stride(), strict=True)
    return any(stride == 0 and size > 1 for size, stride in pairs)


def _log_probability_check(node: Any, loss: Tensor) -> Tensor:
    """NLL on something not made by ``log_softmax``: are its rows log-probabilities
    (``log(softmax(x))`` written out is fine)?"""
    scores = node._saved_self
    if scores.dim() == 1:
        scores = scores.unsqueeze(0)
    with torch.no_grad():
        off = (scores.float().logsumexp(dim=1).abs() > _NOT_LOG_PROBABILITIES).float().mean()
    flagged = torch.tensor(NLL_WITHOUT_LOG_SOFTMAX, device=off.device)
    return torch.where(off > _ROWS, flagged, torch.zeros_like(flagged))

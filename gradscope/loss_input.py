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

:func:`fault` returns a code (:data:`FINE` or one of the four) as a 0-dim tensor on the
loss's device, without a host sync, or None when the loss is not one of those functions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradscope.constant_loss import loss_node

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


def fault(loss: Tensor) -> Tensor | None:
    """The code of the mistake the loss's graph shows (see the module docstring)."""
    node = loss_node(loss)
    if node is None:
        return None
    try:
        return _judge(node, loss)
    except (RuntimeError, TypeError, AttributeError):
        return None  # freed saved tensors, odd shapes: not measured, never a crash


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

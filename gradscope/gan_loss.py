"""How confidently the discriminator rejects the generator's samples, read from the
generator's own (saturating) loss.

The saturating generator loss of Goodfellow et al. (2014), minimising
``log(1 - D(G(z)))`` (written ``-binary_cross_entropy(D(G(z)), 0)`` or
``torch.log(1 - D(G(z)))``), gives the generator a gradient proportional to ``D(G(z))``:
once the discriminator rejects the samples (``D(G(z))`` near 0) the generator gets almost
none, where the non-saturating ``binary_cross_entropy(D(G(z)), 1)`` would give it a
full one (Goodfellow et al.'s own remedy).  :func:`fake_score` returns the mean
``D(G(z))`` of a loss in that form, on a detail step, as a 0-dim tensor (no host sync),
or None for any other loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradscope.constant_loss import PASS_THROUGH, node_past

#: Nodes between the logged loss and its log / BCE term: the loss functions' scaling,
#: casting and reducing nodes, and reshapes of a (N, 1) score.
_PASS = PASS_THROUGH | {"ViewBackward0", "SqueezeBackward0", "SqueezeBackward1"}


def fake_score(loss: Tensor) -> Tensor | None:
    """Mean ``D(G(z))`` when ``loss`` is the saturating generator loss, else None."""
    node = node_past(loss, _PASS)
    if node is None:
        return None
    try:
        with torch.no_grad():
            return _score(node)
    except (RuntimeError, TypeError, AttributeError):
        return None  # freed saved tensors: not measured, never a crash


def _score(node: Any) -> Tensor | None:
    name = node.name()
    if name in ("BinaryCrossEntropyBackward0", "BinaryCrossEntropyWithLogitsBackward0"):
        # Scored against the "fake" label 0: the generator's loss is then the saturating
        # one (the non-saturating one scores against 1).
        target = node._saved_target
        scores = node._saved_self.float()
        if name.endswith("LogitsBackward0"):
            scores = torch.sigmoid(scores)
        zero = (target == 0).all()
        return torch.where(zero, scores.mean(), torch.full_like(scores.mean(), float("nan")))
    if name == "LogBackward0":  # log(1 - D(G(z))), perhaps + eps
        inner = node.next_functions[0][0] if node.next_functions else None
        while inner is not None and inner.name() == "AddBackward0":
            inner = next((f for f, _ in inner.next_functions if f is not None), None)
        if inner is not None and inner.name() in ("RsubBackward1", "RsubBackward0"):
            return (1 - node._saved_self.float()).mean()
    return None

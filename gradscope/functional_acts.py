"""Activations called as functions (``F.relu``, ``torch.tanh``, ``torch.sigmoid``) on a
module's output, found in the logged loss's autograd graph.

Hooks see modules only.  An activation that is not a module would go unmeasured: a net
written with ``F.relu`` whose units are all dead, or with ``torch.tanh`` on inputs 100x
too large, looked healthy.  On the first detail steps whose loss is logged before
``backward()``, the loss's graph is walked (at most :data:`MAX_NODES` nodes) for ReLU,
sigmoid and tanh nodes that take a measured module's output directly and are not a
module's output themselves.  From then on that module's output is measured the way the
activation sees it (:class:`gradscope.stats.ActivationAccumulator`, kinds ``pre_relu``,
``pre_sigmoid``, ``pre_tanh``): a unit <= 0 for every sample is a silent ReLU unit, and
``|x|`` beyond ``atanh(0.99)`` or ``logit(0.99)`` puts tanh or sigmoid within 1% of an
asymptote.  The module's row carries the activation's code (``functional_act``) so the
detectors can say what they judged.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

#: Autograd node name -> the measuring kind of the module whose output it takes.
NODE_KINDS = {
    "ReluBackward0": "pre_relu",
    "SigmoidBackward0": "pre_sigmoid",
    "TanhBackward0": "pre_tanh",
}
#: Measuring kind -> the code recorded in the ``functional_act`` column.
CODES = {"pre_relu": 1.0, "pre_sigmoid": 2.0, "pre_tanh": 3.0}
#: Code -> the activation, as messages name it.
ACTIVATIONS = {1.0: "relu", 2.0: "sigmoid", 3.0: "tanh"}
#: Pre-activation sizes past which tanh / sigmoid sit within 1% of an asymptote.
TANH_SATURATES = math.atanh(0.99)
SIGMOID_SATURATES = math.log(0.99 / 0.01)
#: The graph walk's bound, in nodes (a large model's graph is cut off, not walked whole).
MAX_NODES = 4096
#: Loss graphs walked per run: the model's structure does not change between steps.
WALKS = 3


def find(loss: Tensor, outputs: dict[int, int], kinds: list[str]) -> dict[int, str]:
    """Module -> measuring kind, for each measured module whose output ``loss``'s graph
    passes straight into a ReLU, sigmoid or tanh that is not an activation module
    (``outputs``: id of each measured output's ``grad_fn`` -> its module, as the recorder
    keeps them; ``kinds``: each module's activation kind, ``plain`` for the rest).  An
    identity module after the function (a dropout at p=0) hands on the same node."""
    found: dict[int, str] = {}
    seen: set[int] = set()
    todo: list[Any] = [loss.grad_fn]
    while todo and len(seen) < MAX_NODES:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        inputs = [f for f, _ in node.next_functions if f is not None]
        kind = NODE_KINDS.get(node.name())
        made_by = outputs.get(id(node))
        module = made_by is not None and kinds[made_by] != "plain"
        if kind is not None and not module and inputs and id(inputs[0]) in outputs:
            found.setdefault(outputs[id(inputs[0])], kind)
        todo.extend(inputs)
    return found

"""Which watched models feed which: a GAN's generator and discriminator watched apart.

The standard two-optimizer GAN loop watches each player with its own scope
(``watch(netG, optimizer=opt_g)``, ``watch(netD, optimizer=opt_d)``).  Neither scope can
tell from its own model that it is one half of a game, so each notes the output of its
model's top-level call, and a scope whose model is then called on that very tensor (or
on ``.detach()`` of it: the same storage) knows it is downstream of the other.  Only the
first steps are followed; nothing is kept but a few weak references.

When only the generator is watched (``watch(netG, optimizer=opt_g)``, the discriminator
stepped by its own optimizer), :func:`judged_by_another_network` reads it from the
logged loss: its graph runs through trainable parameters that are not the model's, and
the loss has no data-dependent target (the generator's loss scores the discriminator's
verdict against a constant label, or none at all).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

from torch import Tensor

from gradscope import stats
from gradscope.constant_loss import loss_node

#: Steps during which a scope notes and matches its model's inputs and outputs.
FOLLOW_STEPS = 8
_MAX_OUTPUTS = 32
#: Output storage address -> (its owner, the output itself), both weakly: an output that
#: was freed no longer links anything (its memory, and so its address, is reused).
_outputs: OrderedDict[int, tuple[weakref.ref, weakref.ref]] = OrderedDict()


def _first(value: Any) -> tuple[Tensor, int] | None:
    x = stats.first_float_tensor(value)
    if not isinstance(x, Tensor) or x.numel() == 0:
        return None
    try:
        return x, x.data_ptr()
    except RuntimeError:  # tensors without storage (meta, some wrappers)
        return None


def note_output(owner: object, output: Any) -> None:
    """Remember that ``owner``'s model produced ``output``."""
    found = _first(output)
    if found is None:
        return
    x, key = found
    try:
        _outputs[key] = (weakref.ref(owner), weakref.ref(x))
    except TypeError:  # a tensor subclass without weak references
        return
    _outputs.move_to_end(key)
    while len(_outputs) > _MAX_OUTPUTS:
        _outputs.popitem(last=False)


def producer_of(owner: object, args: Any) -> object | None:
    """The other owner whose model produced the first tensor of ``args`` (that very
    output, or a view or ``.detach()`` of it, still alive), if any."""
    found = _first(args)
    entry = _outputs.get(found[1]) if found is not None else None
    if entry is None or entry[1]() is None:
        return None  # never an output, or one that was freed (its address reused since)
    producer = entry[0]()
    return producer if producer is not None and producer is not owner else None


#: Autograd nodes visited at most when following a loss's graph.
_MAX_NODES = 5000


def judged_by_another_network(loss: Tensor, own: set[int]) -> bool | Tensor:
    """Whether ``loss`` is another trainable network's verdict on the model whose parameter
    ids are ``own``: on its graph's way back to the model's parameters, the gradient passes
    through operations with trainable parameters that are not the model's (a teacher whose
    output is only a target hangs off to the side), and the loss compares with no
    data-dependent target (a constant label, as a GAN generator's loss does; a fine-tuned
    backbone's head or a decoder trained by a second optimizer has the data's labels or
    inputs as targets).  Without a host sync: when the target's constancy is what decides,
    the answer is a 0-dim boolean tensor on the loss's device (read when the run is
    reported)."""
    if loss.grad_fn is None or not _through_another_network(loss, own):
        return False
    try:
        return _constant_target(loss)
    except RuntimeError:  # logged after backward(): the saved targets are freed
        return False


def _through_another_network(loss: Tensor, own: set[int]) -> bool:
    """Whether the gradient's way from ``loss`` back to the parameters ``own`` passes
    through operations with trainable parameters that are not among them."""
    children: dict[int, list] = {}
    order: list = []  # post-order: every node after the nodes it leads to
    stack: list[tuple[Any, bool]] = [(loss.grad_fn, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            order.append(node)
            continue
        if id(node) in children:
            continue
        if len(children) >= _MAX_NODES:
            return False  # too large a graph to follow: say nothing
        children[id(node)] = [f for f, _ in node.next_functions if f is not None]
        stack.append((node, True))
        stack.extend((c, False) for c in children[id(node)] if id(c) not in children)
    reaches: dict[int, bool] = {}  # whether a node leads back to one of the model's own
    for node in order:
        variable = getattr(node, "variable", None)
        mine = isinstance(variable, Tensor) and id(variable) in own
        reaches[id(node)] = mine or any(reaches[id(c)] for c in children[id(node)])
    for node in order:
        if not reaches[id(node)]:
            continue
        for child in children[id(node)]:
            variable = getattr(child, "variable", None)
            if isinstance(variable, Tensor) and variable.requires_grad and id(variable) not in own:
                return True
    return False


def _constant_target(loss: Tensor) -> bool | Tensor:
    """Whether the recognised loss function behind ``loss`` compares with one value only
    (a 0-dim boolean tensor), or True when it has no target (a custom loss)."""
    node = loss_node(loss)
    target = getattr(node, "_saved_target", None) if node is not None else None
    if not isinstance(target, Tensor) or target.numel() == 0:
        return True
    flat = target.detach().reshape(-1)
    return (flat == flat[0]).all()

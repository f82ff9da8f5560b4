"""Which watched models feed which: a GAN's generator and discriminator watched apart.

The standard two-optimizer GAN loop watches each player with its own scope
(``watch(netG, optimizer=opt_g)``, ``watch(netD, optimizer=opt_d)``).  Neither scope can
tell from its own model that it is one half of a game, so each notes the output of its
model's top-level call, and a scope whose model is then called on that very tensor (or
on ``.detach()`` of it: the same storage) knows it is downstream of the other.  Only the
first steps are followed; nothing is kept but a few weak references.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

from torch import Tensor

from gradscope import stats

#: Steps during which a scope notes and matches its model's inputs and outputs.
FOLLOW_STEPS = 8
_MAX_OUTPUTS = 32
_outputs: OrderedDict[int, weakref.ref] = OrderedDict()


def _key(value: Any) -> int | None:
    x = stats.first_float_tensor(value)
    if not isinstance(x, Tensor) or x.numel() == 0:
        return None
    try:
        return x.data_ptr()
    except RuntimeError:  # tensors without storage (meta, some wrappers)
        return None


def note_output(owner: object, output: Any) -> None:
    """Remember that ``owner``'s model produced ``output``."""
    key = _key(output)
    if key is None:
        return
    _outputs[key] = weakref.ref(owner)
    _outputs.move_to_end(key)
    while len(_outputs) > _MAX_OUTPUTS:
        _outputs.popitem(last=False)


def producer_of(owner: object, args: Any) -> object | None:
    """The other owner whose model produced the first tensor of ``args``, if any."""
    key = _key(args)
    if key is None or key not in _outputs:
        return None
    producer = _outputs[key]()
    return producer if producer is not None and producer is not owner else None

"""Measuring how much gradient reaches the first and the last time step of a recurrence.

Backpropagation through time happens inside ``nn.RNN``/``nn.GRU``/``nn.LSTM``, where no
module hook can see it.  What leaves the recurrence is the gradient of the loss with
respect to the layer's *input* at each time step, ``dL/dx_t``: it carries everything the
recurrence passed back to step ``t``.  Its norm at the first step over its norm at the
last step is the through-time gain (Bengio et al. 1994; Pascanu et al. 2013): tiny when
the gradient vanishes over the sequence, huge when it explodes.

On detail steps a forward pre-hook makes the input require a gradient when it does not
(a leaf copy: the parameters' gradients are unchanged) and a tensor hook takes the two
norms during backward.  A user-written loop that calls the same cell at every time step
is measured the same way on each call's output: the first call's gradient over the
last call's.  A packed sequence (``pack_padded_sequence``) is measured on its data: the
first step's rows (every sequence) against the last step's (the longest ones), per
sequence.  Values stay on the device until the step's one host transfer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

#: Modules whose own forward runs the recurrence.
SEQUENCE_LAYERS = (torch.nn.RNN, torch.nn.GRU, torch.nn.LSTM)
#: A module called at least this many times in one step is treated as a recurrent cell
#: (a GAN's discriminator runs twice per step, a triplet network's encoder three times).
MIN_CALLS_FOR_A_LOOP = 4

Sink = Callable[[Tensor, Tensor], None]


def is_sequence_layer(module: torch.nn.Module) -> bool:
    """Whether ``module`` runs a recurrence over a sequence inside its forward."""
    return isinstance(module, SEQUENCE_LAYERS)


def watch_input(module: torch.nn.Module, args: tuple, sink: Sink) -> tuple | None:
    """For a forward pre-hook: hook the gradient of the sequence input, making a leaf copy
    that requires a gradient when the input does not.  Returns the new args, or None."""
    if args and isinstance(args[0], PackedSequence):
        return _watch_packed(args, sink)
    if not args or not isinstance(args[0], Tensor) or not args[0].is_floating_point():
        return None  # an integer input: not measured
    x = args[0]
    if x.dim() < 2:
        return None
    time_dim = 1 if getattr(module, "batch_first", False) and x.dim() == 3 else 0
    replaced = None
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
        replaced = (x, *args[1:])
    x.register_hook(_first_and_last(time_dim, sink))
    return replaced


def _watch_packed(args: tuple, sink: Sink) -> tuple | None:
    """:func:`watch_input` for a packed sequence: its data holds the time steps one after
    another (``batch_sizes[t]`` rows each, longest sequences first)."""
    packed: PackedSequence = args[0]
    x, sizes = packed.data, packed.batch_sizes
    if not x.is_floating_point() or sizes.numel() < 2:
        return None
    first_rows, last_rows = int(sizes[0]), int(sizes[-1])
    replaced = None
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
        replaced = (packed._replace(data=x), *args[1:])

    def hook(g: Tensor) -> None:
        g = g.detach()
        per_sequence = (last_rows / first_rows) ** 0.5  # as many sequences as the last step
        first = torch.linalg.vector_norm(g[:first_rows], dtype=torch.float32) * per_sequence
        sink(first, torch.linalg.vector_norm(g[-last_rows:], dtype=torch.float32))

    x.register_hook(hook)
    return replaced


def watch_call_output(x: Tensor, sink: Callable[[Tensor], None]) -> None:
    """Hook the gradient of one call's output (a cell called once per time step)."""
    if x.requires_grad:
        x.register_hook(lambda g: sink(torch.linalg.vector_norm(g.detach(), dtype=torch.float32)))


def _first_and_last(time_dim: int, sink: Sink) -> Callable[[Tensor], None]:
    def hook(g: Tensor) -> None:
        g = g.detach()
        if g.shape[time_dim] < 2:
            return
        first = torch.linalg.vector_norm(g.select(time_dim, 0), dtype=torch.float32)
        last = torch.linalg.vector_norm(g.select(time_dim, -1), dtype=torch.float32)
        sink(first, last)

    return hook


class CallGradients:
    """Gradient norms of each call's output of one module within a step, in call order."""

    def __init__(self) -> None:
        self.norms: dict[int, Tensor] = {}
        self.calls = 0

    def next_sink(self) -> Callable[[Tensor], None]:
        """A sink for the next call's gradient norm."""
        index = self.calls
        self.calls += 1

        def sink(norm: Tensor) -> None:
            self.norms[index] = norm

        return sink

    def first_and_last(self) -> tuple[Tensor, Tensor] | None:
        """(first call's, last call's) gradient norm when the module ran as a loop."""
        if self.calls < MIN_CALLS_FOR_A_LOOP or 0 not in self.norms:
            return None
        last = self.norms.get(self.calls - 1)
        return None if last is None else (self.norms[0], last)

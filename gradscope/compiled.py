"""torch.compile: watch a compiled model without touching its compiled graph.

A forward hook on a module inside a compiled region is either traced (its changing
Python state would recompile the graph at every step) or, wrapped in
``torch.compiler.disable``, run eagerly at a graph break (one break per hooked module:
the graph is split, inductor cannot fuse across the pieces, and ``fullgraph=True``
fails).  So when ``watch()`` is given the module ``torch.compile`` returned, gradscope
hooks only what runs outside the graph: the optimizer's step hooks (every gradient,
parameter, update and loss statistic) and one hook on the wrapper that notes a step
began.  The activation statistics and the NaN-origin replay are not taken.
"""

from __future__ import annotations

import torch

#: The report's sentence on what a compiled model does not give.
NOTE = (
    "torch.compile: activation statistics (dead ReLU, saturation, activation sizes) and "
    "the module where a NaN began are not measured, since forward hooks inside the compiled "
    "graph would break it; gradient, parameter, update and loss statistics are complete"
)


def is_compiled(model: torch.nn.Module) -> bool:
    """True for the module ``torch.compile(model)`` returns (an ``OptimizedModule``)."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return isinstance(model, OptimizedModule)

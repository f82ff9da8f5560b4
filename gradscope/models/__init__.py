"""Reference models of the seed notes, their faulty twins and the data to train them on.

``spec`` holds :class:`ModelSpec`, ``catalog`` the table of built-in specs, ``networks``
the modules, ``data`` and ``training`` the batches and steps.  The specs offered by every
loaded plugin are listed by :mod:`gradscope.reference`.
"""

from __future__ import annotations

from gradscope.models.catalog import builtin_specs
from gradscope.models.spec import ModelSpec

__all__ = ["ModelSpec", "builtin_specs"]

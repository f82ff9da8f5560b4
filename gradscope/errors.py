"""Errors gradscope raises on purpose, each with a one-sentence message for the user."""

from __future__ import annotations


class GradscopeError(Exception):
    """Base class: something the user passed or loaded cannot be used as it is."""


class InputError(GradscopeError, ValueError):
    """Bad input (a batch, a loss, a checkpoint, a model name) with a fix in the message."""


class GradscopeWarning(UserWarning):
    """Something gradscope could not measure (filter it with the warnings module)."""

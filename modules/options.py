"""The one helper that declares a schema field's rules (experiments/core/schema.py checks them).

Here, not in experiments/, so that an adapter's options schema (modules/adapters/) declares its fields with
the same rules without importing the experiment layer.
"""
from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any = None, *, min: float | None = None, max: float | None = None,  # noqa: A002
           above: float | None = None, below: float | None = None, length: int | None = None,
           min_len: int | None = None) -> Any:
    """A schema field: ``min``/``max`` inclusive bounds, ``above``/``below`` exclusive ones (``above=0``: strictly
    positive, for a value that divides or scales, where 0 is as wrong as a negative); on a list they bound
    every element, and ``length`` (exactly that many values) or ``min_len`` (at least that many; 1 = not
    empty) bound its length."""
    rules = {"min": min, "max": max, "above": above, "below": below, "length": length, "min_len": min_len}
    if isinstance(default, (list, dict)):  # a mutable default: one copy per instance, as dataclasses require
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=rules)
    return dataclasses.field(default=default, metadata=rules)

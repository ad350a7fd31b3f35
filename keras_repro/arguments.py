"""Checks of the arguments users pass, made in one place so every function words them alike."""

from __future__ import annotations

from typing import Any

import numpy as np


def positive_int(name: str, value: Any, optional: bool = False) -> int | None:
    """`value` as an int if it is a positive integer (or None, when `optional`).

    Args:
        name: The argument's name, for the message.
        value: What the user passed.
        optional: Whether None is accepted (and returned).

    Returns:
        The value as a Python int, or None.

    Raises:
        ValueError: Naming the argument and what was received.

    Example:

    >>> positive_int("epochs", 3), positive_int("steps", None, optional=True)
    (3, None)
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        kind = "a positive int or None" if optional else "a positive int"
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return int(value)

"""argparse value types shared by the commands: each a clear one-line error for a bad value."""

from __future__ import annotations

import argparse

__all__ = ["positive_int"]


def positive_int(s: str) -> int:
    """An integer ≥ 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v

"""Deprecated 0.2 module paths, kept for one release: each old module re-exports the public
names of its new home and warns once on import."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def reexport(old: str, new: str, namespace: dict[str, Any]) -> None:
    """Fill ``namespace`` (the old module's globals) with ``new``'s public names and warn."""
    module = importlib.import_module(new)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    namespace.update({n: getattr(module, n) for n in names})
    namespace["__all__"] = list(names)
    warnings.warn(
        f"{old} is deprecated since idcmap 0.3; import from {new} instead",
        DeprecationWarning,
        stacklevel=3,
    )

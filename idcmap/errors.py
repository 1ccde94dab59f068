"""The one error hierarchy of idcmap.

Every message says what went wrong *and what to do next*; the CLI prints it on one line
(no traceback unless ``--debug``) and exits non-zero.
"""

from __future__ import annotations


class IDCMapError(Exception):
    """Base class of every error idcmap raises on purpose.

    ``str(error)`` is one short line: what went wrong and what to do, in Python-API terms
    (``mpp=0.25``, ``overwrite=True``; the CLI translates them to flags). ``detail`` holds what
    would make the line long (each backend's own error message), shown with ``--debug``.
    """

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class UsageError(IDCMapError):
    """An option or argument is out of range (stride 0, threshold 1.5, unknown device...)."""


class SlideError(IDCMapError):
    """A slide cannot be found, opened or read."""


class ResolutionError(SlideError):
    """The slide's µm/px is unknown or implausible: the user must pass ``--mpp``."""


class UnsupportedImageError(SlideError):
    """The image is not 8-bit brightfield RGB (16-bit, fluorescence, single channel...)."""


class ModelError(IDCMapError):
    """A model file is missing, damaged, foreign or inconsistent with its config."""


class OutputError(IDCMapError):
    """The output folder cannot be written (permissions, full disk, a file in the way)."""


class IDCMapWarning(UserWarning):
    """Base class of idcmap's warnings (the CLI prints each on one line)."""


class MppMismatchWarning(IDCMapWarning):
    """The ``mpp`` given contradicts the slide's own metadata by more than 25 %."""

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


class Cancelled(BaseException):
    """Background work given up because the run is stopping (Ctrl-C or SIGTERM reached the main
    thread while a slide's outputs were being written in the background): not a failure of
    the slide. A BaseException, like KeyboardInterrupt, so that whoever reports failures lets
    it through and temporary outputs are cleaned up."""


class IDCMapWarning(UserWarning):
    """Base class of idcmap's warnings (the CLI prints each on one line)."""


class MppMismatchWarning(IDCMapWarning):
    """The ``mpp`` given contradicts the slide's own metadata by more than 25 %."""


def interruption(error: BaseException) -> BaseException | None:
    """The interruption (KeyboardInterrupt, SystemExit, the CLI's SIGTERM) that ``error`` was
    raised while handling, if any; else None.

    A signal that lands inside a library's clean-up comes out as that library's own error with
    the interruption only as its cause or context (e.g. in ``np.savez_compressed``, zipfile's
    ValueError "Can't close the ZIP file while there is an open writing handle"): whoever
    catches ``Exception`` to report a failure re-raises this instead. GeneratorExit and
    asyncio's CancelledError are not interruptions of the run.
    """
    import asyncio

    seen: set[int] = set()
    todo: list[BaseException | None] = [error.__cause__, error.__context__]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if not isinstance(e, (Exception, GeneratorExit, asyncio.CancelledError)):
            return e
        todo += [e.__cause__, e.__context__]
    return None

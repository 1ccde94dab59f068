"""Deprecated since 0.3 (removed in 0.4): use :mod:`idcmap.pipeline.contours`."""

from idcmap._shim import reexport

reexport(__name__, "idcmap.pipeline.contours", globals())

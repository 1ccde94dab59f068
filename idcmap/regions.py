"""Deprecated since 0.3 (removed in 0.4): use :mod:`idcmap.pipeline.regions`."""

from idcmap._shim import reexport

reexport(__name__, "idcmap.pipeline.regions", globals())

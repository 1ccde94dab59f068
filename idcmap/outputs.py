"""Deprecated since 0.3 (removed in 0.4): use :mod:`idcmap.output.folder`."""

from idcmap._shim import reexport

reexport(__name__, "idcmap.output.folder", globals())

"""The command line: ``main`` (``idcmap run``, ``info``, ``view``) and ``training``
(``prepare-data``, ``train``, ``train-aggregator``, ``evaluate``), thin layers over the Python
API."""

from idcmap.cli.main import main

__all__ = ["main"]

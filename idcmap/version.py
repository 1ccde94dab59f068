"""The one place the version lives (read by pyproject and ``idcmap.__version__``)."""

__version__ = "0.3.0.dev0"

"""A slide's output files: QuPath GeoJSON and arrays (``export``), pictures (``render``), the
table of files and the atomic save (``folder``), and the cohort table (``cohort``)."""

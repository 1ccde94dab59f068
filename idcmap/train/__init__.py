"""Training and evaluation (needs the ``train`` extra for fastai): patch data and splits
(``data``), the patch network (``patches``), the context aggregator (``aggregator``), metrics,
ground-truth readers and evaluation (``metrics``, ``truth``, ``evaluate``)."""

"""Training and evaluation (needs the ``train`` extra for fastai): patch data and splits
(``data``), the patch network (``patches``) and its scanner / lab degradations (``degrade``),
the context aggregator (``aggregator``), scores (``metrics``), ground truth on a heatmap grid
(``truth``), slides with truth as scoring cases and the pipeline's mask (``cases``), the
comparison picture (``figures``), the evaluation loops and tables (``evaluate``) and the
region-stage grid search (``tune``)."""

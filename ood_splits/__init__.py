"""OOD split builder: vocabularies, simulated annealing and manifests over a dataset's test split.

``vocab``      text words and K-means acoustic / visual words, TAV union
``annealing``  objective, moves, schedule and seeded chains; numba incremental path and
               numpy full-recompute reference
``builder``    ``SplitConfig`` (``split.*``), manifests, atomic deterministic writes
``report``     sanity report, Markdown + JSON + PNG (all: docs/algorithms.md#ood-split-builder)

Committed manifests live in ``ood_splits/manifests/<dataset>/<name>.json``; the command line is
``msabench splits build`` / ``msabench splits report``. Submodules are imported on use, so
importing this package loads neither numba nor scikit-learn.
"""

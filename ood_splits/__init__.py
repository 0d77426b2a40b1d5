"""OOD split builder: vocabularies, simulated annealing and manifests over a dataset's test split.

``vocab``      text words (METHODS.md §4.2) and K-means acoustic / visual words (§4.6), TAV union (§4.7)
``annealing``  objective, moves, schedule and seeded chains (§4.3–4.5); numba incremental path and
               numpy full-recompute reference
``builder``    ``SplitConfig`` (``split.*``), manifests (§4.9), atomic deterministic writes
``report``     sanity report, Markdown + JSON + PNG (§4.10)

Committed manifests live in ``ood_splits/manifests/<dataset>/<name>.json``; the command line is
``msabench splits build`` / ``msabench splits report``. Submodules are imported on use, so
importing this package loads neither numba nor scikit-learn.
"""

"""OOD split builder: vocabularies, simulated annealing and manifests over a dataset's test split."""

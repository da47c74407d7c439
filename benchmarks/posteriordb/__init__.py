"""Real posteriors from posteriordb as JAX log densities with reference draws.

`benchmarks.posteriordb.targets.targets()` lists them; `extract.py` regenerates
the shipped data (`data/*.npz`) from a posteriordb snapshot.
"""

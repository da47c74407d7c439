"""Deterministic solvers built on the L-BFGS iteration: multi-path Pathfinder
and deterministic ADVI (DADVI) with linear-response covariances."""

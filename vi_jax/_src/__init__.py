"""Internals shared by every layer: types, argument validation, PRNG helpers,
the L-BFGS iteration and the one compile cache. Imports nothing else of vi_jax."""

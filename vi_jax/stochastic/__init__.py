"""Stochastic optimization of a variational objective: the step, the wrappers
that own their state (non-finite guard, convergence, minibatch), the loop, the
fit driver and what builds on it (restarts, adaptive step size, checkpoints,
sharding)."""

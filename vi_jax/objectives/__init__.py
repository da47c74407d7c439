"""Variational objectives: the ELBO and Monte Carlo losses, every Csiszar
f-divergence, closed-form and Monte Carlo KL."""

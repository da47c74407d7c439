"""The model layer: the target log density (calling convention, batching,
checks), the latent space (bijectors onto each latent's support) and adapters
from NumPyro, TFP, inference_gym and Blackjax models."""

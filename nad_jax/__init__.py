"""nad-jax: Neural Architecture Disentanglement in JAX/Flax.

Data flows one way: config -> model + data -> disentangle -> evaluate ->
report. See README.md for the model contract and the command line.
"""

"""The TPU kernels (Pallas) and their plain jax.numpy references."""

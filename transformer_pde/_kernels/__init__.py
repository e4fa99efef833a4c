"""Numba kernels (private): one module per family; they trust their inputs."""

"""Numba kernels (private): one module per family; they trust their inputs."""

from .._progress import install_compile_notice

install_compile_notice()  # one line on stderr the first time a kernel compiles (cache cold)

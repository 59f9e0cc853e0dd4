"""Compiled Cython kernels (built by setup.py); used through fastml.backends.cython."""

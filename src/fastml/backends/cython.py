"""Cython backend: the compiled kernels in fastml._cext overriding the reference ops."""
from .reference import ReferenceBackend


class CythonBackend(ReferenceBackend):
    name = "cython"

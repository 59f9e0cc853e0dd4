"""Numba CPU backend: njit kernels overriding the reference ops."""
from .reference import ReferenceBackend


class NumbaBackend(ReferenceBackend):
    name = "numba"

"""CUDA backend: numba.cuda kernels overriding the reference ops."""
from .reference import ReferenceBackend


class CudaBackend(ReferenceBackend):
    name = "cuda"

    def device_name(self) -> str:
        from numba import cuda
        if cuda.is_available() and not getattr(cuda, "simulator", None):
            return cuda.get_current_device().name
        return "simulator"

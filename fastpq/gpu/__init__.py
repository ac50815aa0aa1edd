"""The GPU path: CuPy launches of the CUDA kernels and the streaming metric's device state."""

"""Compiled kernels of fastpq (Numba CPU kernels, CUDA sources). Pure: arrays in, arrays out."""

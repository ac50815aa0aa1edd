"""Compiled kernels of fastpq (Numba CPU kernels, CUDA sources). Pure: arrays in, arrays out.

On the CPU, `pair_table` is the pair-table skeleton every histogram shares (the table, the row
scan, `pair_table.grow_and_retry`); `pairs` holds its row sources for label-map arrays, `png` the
PNG scanline decoder and its row source, `tables` the segment tables of encoded ids.
"""

"""Artifact compression: mixed int6/int8 quantization, the pickle-free zstd-22 format (int6 bit-packing:
kernels.int6_layout), and the 16,000,000-byte size accounting of a Parameter Golf submission."""

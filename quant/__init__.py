"""Artifact compression: mixed int6/int8 quantization, int6 bit-packing, the pickle-free zstd-22 format,
and the 16,000,000-byte size accounting of a Parameter Golf submission."""

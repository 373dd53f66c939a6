"""The one switch between eager twins and Triton kernels.

`get_ops("eager")` returns `kernels.reference`; `get_ops("triton")` returns `kernels.triton_ops`, which
exposes the same functions backed by Triton kernels. The model calls only what these namespaces hold,
so it never contains kernel logic and can be flipped with one config field.
"""
from __future__ import annotations

from types import ModuleType

BACKENDS = ("eager", "triton")


def get_ops(backend: str) -> ModuleType:
    """Return the op namespace for `backend` ("eager" or "triton")."""
    if backend == "eager":
        from kernels import reference
        return reference
    if backend == "triton":
        from kernels import triton_ops
        return triton_ops
    raise ValueError(f"unknown kernel backend {backend!r}; choose one of {BACKENDS}")

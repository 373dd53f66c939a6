"""The one switch between eager twins and Triton kernels.

`get_ops("eager")` returns the functions of `kernels.reference`; `get_ops("triton")` those of
`kernels.triton_ops`, the same functions backed by Triton kernels (bound when the namespace is made). The model calls only what these namespaces hold,
so it never contains kernel logic and can be flipped with one config field.
"""
from __future__ import annotations

import importlib

BACKENDS = {"eager": "kernels.reference", "triton": "kernels.triton_ops"}


OP_NAMES = ("rms_norm", "rotate_half_split", "qk_norm_rope", "attention", "exclusive_projection", "linear",
            "relu2_mlp", "softcap_cross_entropy", "int6_linear")


class Ops:
    """The op functions of one backend as plain attributes (so a model holding it can be deep-copied and
    traced by torch.compile like any module attribute)."""

    def __init__(self, backend: str):
        if backend not in BACKENDS:
            raise ValueError(f"unknown kernel backend {backend!r}; choose one of {tuple(BACKENDS)}")
        self.backend = backend
        module = importlib.import_module(BACKENDS[backend])
        for name in OP_NAMES:
            setattr(self, name, getattr(module, name))

    def __repr__(self) -> str:
        return f"Ops({self.backend!r})"


def get_ops(backend: str) -> Ops:
    """Return the op namespace for `backend` ("eager" or "triton")."""
    return Ops(backend)

"""Triton-backed op namespace: the same functions as `kernels.reference`, each running a Triton kernel.

Every function here is a `torch.library.custom_op` (with fake and autograd registrations) defined in its
op family's file, so the model compiles with `torch.compile(fullgraph=True)` around the kernels.
"""
from __future__ import annotations

# --- rmsnorm family (kernels/rmsnorm.py) ---
from kernels.rmsnorm import rms_norm  # noqa: F401

# --- residual-norm family (kernels/residual_norm.py) ---
from kernels.residual_norm import residual_norm  # noqa: F401

# --- attention family (kernels/attention.py) ---
from kernels.attention import attention, qk_norm_rope, exclusive_projection, rotate_half_split  # noqa: F401

# --- MLP family (kernels/mlp.py) ---
from kernels.mlp import linear, relu2_mlp  # noqa: F401

# --- cross-entropy family (kernels/cross_entropy.py) ---
from kernels.cross_entropy import softcap_cross_entropy  # noqa: F401

# --- int6 family (kernels/int6_matmul.py) ---
from kernels.int6_matmul import int6_linear  # noqa: F401

"""Triton kernels for the Parameter Golf model, each beside the eager-PyTorch twin that defines it.

`kernels.reference` holds the eager twins (the definition of "correct"); one file per op family
(`attention`, `mlp`, `int6_matmul`, `rmsnorm`, `cross_entropy`) holds the Triton kernels, their
launchers and their `torch.library` registrations. `kernels.ops.get_ops(backend)` is the one
switch the model layer uses to pick eager or Triton.
"""

import os as _os

import torch as _torch

# Without a GPU the kernels run in Triton's CPU interpreter; the flag must be set before any @triton.jit.
if not _torch.cuda.is_available():
    _os.environ.setdefault("TRITON_INTERPRET", "1")

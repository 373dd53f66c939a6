"""Triton kernels for the Parameter Golf model, each beside the eager-PyTorch twin that defines it.

`kernels.reference` holds the eager twins (the definition of "correct"); one file per op family
(`attention`, `mlp`, `int6_matmul`, `rmsnorm`, `cross_entropy`) holds the Triton kernels, their
launchers and their `torch.library` registrations. `kernels.ops.get_ops(backend)` is the one
switch the model layer uses to pick eager or Triton.
"""

"""Fused residual glue + RMSNorm (kernels/residual_norm.py): forward and backward of every call form the model
makes, at the launch configs `_launch_config` picks for the seed's model dim (fixed, so default configs).

The residual stream is fp32 in training; the variant's dtype is that of the sublayer output read (branch) and
of the norm output written (n, the autocast dtype): bf16 on the GPU path, fp32 without autocast.
"""
from __future__ import annotations

from bench.aot.case import DTYPES, fixed_case, mock
from kernels import residual_norm as rn

# form -> (HAS_BRANCH, HAS_SKIP, SKIP_SELF, HAS_MIX, KEEP_RESIDUAL): model/block.py and model/gpt.py's calls
FORMS = {
    "first": (False, False, False, True, False),          # block 0 entry: mix with x0
    "encoder": (True, False, False, True, True),          # encoder entry: pending add, mix, input kept as a skip
    "decoder": (True, True, False, True, False),          # decoder entry: pending add, skip gate, mix
    "decoder_self": (True, True, True, True, False),      # first decoder: its own input as the skip
    "branch": (True, False, False, False, False),         # after attention, and the final norm
}


def cases(s):
    d, rows = s.model_dim, s.tokens
    block_r, block_d, warps = rn._launch_config(d)
    bwd_r, bwd_d, bwd_warps = rn._launch_config(d, backward=True)
    out = []
    for dt, dtype in DTYPES.items():
        io, f32 = mock(dtype), mock(DTYPES["fp32"])
        for form, (branch, skip, skip_self, mix, keep) in FORMS.items():
            flags = dict(HAS_BRANCH=branch, HAS_SKIP=skip, SKIP_SELF=skip_self, HAS_MIX=mix)
            stride = (lambda present: d if present else 0)
            fwd_args = (f32, io, f32, f32, f32, f32, f32, f32, f32, f32, io, f32, rows, d, d, stride(branch),
                        stride(skip and not skip_self), stride(mix), stride(keep), d, d, 0.5, 1e-6)
            out.append(fixed_case("residual_norm._residual_norm_forward_kernel", f"fwd {form} {dt}",
                                  rn._residual_norm_forward_kernel, fwd_args, dict(flags, KEEP_RESIDUAL=keep),
                                  BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps))
            # h is read on (dh) everywhere but after the final norm, the "branch" form's second use
            for dh in ((True, False) if form == "branch" else (True,)):
                bwd_args = (f32, f32, io, f32, io, f32, f32, f32, f32, f32, f32, f32, f32, io, f32, f32, f32,
                            rows, d, stride(keep), stride(dh), d, d, stride(branch), stride(skip and not skip_self),
                            stride(mix), d, stride(branch), stride(skip and not skip_self), stride(mix), 0.5)
                variant = f"bwd {form}{'' if dh else ' final'} {dt}"
                out.append(fixed_case("residual_norm._residual_norm_backward_kernel", variant,
                                      rn._residual_norm_backward_kernel, bwd_args,
                                      dict(flags, HAS_DR=keep, HAS_DH=dh),
                                      BLOCK_R=bwd_r, BLOCK_D=bwd_d, num_warps=bwd_warps))
    return out

"""The TTT optimizer step: gradients in one flat buffer, averaged, clipped and zeroed as one tensor; fused SGD.

Why: a TTT step on the seed model updates about 130 parameter tensors 18,920 times per evaluation. Handled
tensor by tensor (zero_grad to None, torch.cat for the all-reduce and a copy back per tensor, a norm per tensor
for the clip) that is hundreds of small kernels per step. Here every trainable parameter's .grad is a view into
one flat buffer per parameter dtype (one fp32 buffer, plus a bf16 one when tok_emb is stored in bf16 as in
PR #598), so backward accumulates straight into it; zeroing, the cross-rank average (one all_reduce per buffer,
no copies), the global-norm clip (one norm per buffer, one scale) and the fused SGD update are a handful of
launches, and none reads a value back to the host. `bench.eval_accounting.ttt_step_kernel_ops` counts both paths.
`late_qat_for_training` turns the fake int6 quantization on around the TTT training forwards (--ttt-qat).

`FlatGradSGD(..., flat=False)` keeps the tensor-by-tensor path (torch.optim.SGD's default implementation,
torch.nn.utils.clip_grad_norm_, eval.distributed.average_gradients_) as the reference.
The clip is torch's: scale = min(1, max_norm / (‖g‖₂ + 1e-6)), with ‖g‖₂ over all trainable gradients.
"""
from __future__ import annotations

import torch

from eval.distributed import average_gradients_, is_distributed


class FlatGradSGD:
    """Momentum SGD over `params` (one optimizer for the whole evaluation, so momentum carries across chunks)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, momentum: float, grad_clip: float,
                 flat: bool = True):
        self.params, self.grad_clip, self.flat = list(params), grad_clip, flat
        if not self.params:
            raise ValueError("TTT has no trainable parameters (every block frozen and nothing else trains?)")
        self.buffers: list[torch.Tensor] = []
        if flat:
            devices = {p.device for p in self.params}
            if len(devices) != 1:
                raise ValueError(f"the flat TTT step needs every trainable tensor on one device, got {devices}")
            by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
            for p in self.params:
                by_dtype.setdefault(p.dtype, []).append(p)
            for dtype, params in by_dtype.items():
                buffer = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=params[0].device)
                offset = 0
                for p in params:
                    p.grad = buffer[offset:offset + p.numel()].view_as(p)  # backward adds into the buffer in place
                    offset += p.numel()
                self.buffers.append(buffer)
            self.optimizer = _fused_sgd(self.params, lr, momentum)
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def buffer(self) -> torch.Tensor | None:
        """The flat gradient buffer when every trainable tensor shares one dtype (None otherwise)."""
        return self.buffers[0] if len(self.buffers) == 1 else None

    def zero_grad(self) -> None:
        if self.flat:
            torch._foreach_zero_(self.buffers)
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Average the gradients over ranks, clip their global norm, take the SGD step."""
        if not self.flat:
            average_gradients_(self.params)
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            return
        if is_distributed():
            import torch.distributed as dist
            for buffer in self.buffers:
                dist.all_reduce(buffer, op=dist.ReduceOp.AVG if _has_avg(buffer) else dist.ReduceOp.SUM)
                if not _has_avg(buffer):
                    buffer.div_(dist.get_world_size())
        if self.grad_clip > 0:
            if len(self.buffers) == 1:
                norm = torch.linalg.vector_norm(self.buffers[0])
            else:  # the norm over all buffers, each buffer's norm taken in fp32
                norm = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(b, dtype=torch.float32) for b in self.buffers]))
            scale = torch.clamp(self.grad_clip / (norm + 1e-6), max=1.0)
            for buffer in self.buffers:
                buffer.mul_(scale)
        self.optimizer.step()

    def release(self) -> None:
        """Detach the gradient views from the parameters (the model leaves TTT without .grad tensors)."""
        for p in self.params:
            p.grad = None
        self.buffers = []


def _fused_sgd(params: list[torch.nn.Parameter], lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD as one fused kernel per step where torch has one for the device (CUDA, CPU), else the foreach path.

    The foreach path (PR #598's own SGD) whenever a parameter is bf16 (the seed's tok_emb): torch 2.13's fused
    CPU kernel leaves the vectorized part of a bf16 parameter unchanged (a 16-element bf16 parameter does not
    move at all; tests/test_seed_preset.py), and no GPU has checked the fused CUDA kernel for it yet."""
    device = params[0].device.type
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        fused = device in _get_fused_kernels_supported_devices()
    except ImportError:  # pragma: no cover (older torch)
        fused = device == "cuda"
    if any(p.dtype == torch.bfloat16 for p in params):
        fused = False
    if fused:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=True)


def _has_avg(tensor: torch.Tensor) -> bool:
    """ReduceOp.AVG exists only on NCCL; gloo (CPU) sums and the caller divides."""
    return tensor.is_cuda


class late_qat_for_training:
    """Turn the model's fake int6 STE quantization (GPT.set_late_qat) on for TTT training forwards (--ttt-qat).

    598 ran its TTT adaptation with late QAT active (spec §6.3), and its flag is class-wide on CastedLinear, so
    it covers the block matrices and the bigram and value-embedding projections: GPT.qat_linears() is that
    set. Scoring always uses the plain float weights.
    """

    def __init__(self, model: torch.nn.Module, enabled: bool):
        self.model, self.enabled = model, enabled
        self.previous = bool(getattr(model, "late_qat", False))

    def __enter__(self):
        if self.enabled:
            if not hasattr(self.model, "set_late_qat"):
                raise ValueError("--ttt-qat needs a model with set_late_qat(enabled) (model.gpt.GPT)")
            self.model.set_late_qat(True)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.model.set_late_qat(self.previous)
        return False

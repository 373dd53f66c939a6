"""The TTT optimizer step: gradients in one flat buffer, averaged, clipped and zeroed as one tensor; fused SGD.

Why: a TTT step on the seed model updates about 130 parameter tensors 18,920 times per evaluation. Handled
tensor by tensor (zero_grad to None, torch.cat for the all-reduce and a copy back per tensor, a norm per tensor
for the clip) that is hundreds of small kernels per step. Here every trainable parameter's .grad is a view into
one flat fp32 buffer, so backward accumulates straight into it; zeroing, the cross-rank average (one
all_reduce, no copies), the global-norm clip (one norm, one scale) and the fused SGD update are a handful of
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
        self.buffer = None
        if flat:
            kinds = {(p.dtype, p.device) for p in self.params}
            if len(kinds) != 1:
                raise ValueError(f"the flat TTT step needs one dtype and device for every trainable tensor, got {kinds}")
            self.buffer = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype,
                                      device=self.params[0].device)
            offset = 0
            for p in self.params:
                p.grad = self.buffer[offset:offset + p.numel()].view_as(p)  # backward adds into the buffer in place
                offset += p.numel()
            self.optimizer = _fused_sgd(self.params, lr, momentum)
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        if self.flat:
            self.buffer.zero_()
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
            dist.all_reduce(self.buffer, op=dist.ReduceOp.AVG if _has_avg(self.buffer) else dist.ReduceOp.SUM)
            if not _has_avg(self.buffer):
                self.buffer.div_(dist.get_world_size())
        if self.grad_clip > 0:
            norm = torch.linalg.vector_norm(self.buffer)
            self.buffer.mul_(torch.clamp(self.grad_clip / (norm + 1e-6), max=1.0))
        self.optimizer.step()

    def release(self) -> None:
        """Detach the gradient views from the parameters (the model leaves TTT without .grad tensors)."""
        for p in self.params:
            p.grad = None
        self.buffer = None


def _fused_sgd(params: list[torch.nn.Parameter], lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD as one fused kernel per step where torch has one for the device (CUDA, CPU), else the foreach path."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        fused = params[0].device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # pragma: no cover (older torch)
        fused = params[0].device.type == "cuda"
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

"""The model's bias-free linear layer: fp32 weight, kernel-backend matmul, optional int6 weights or fake-quant.

Three ways to run, decided per call:
  - int6 weights set (`set_int6`, evaluation of a quantized artifact): ops.int6_linear(x, packed, scales, K);
  - `fake_quant` on and the module in train mode (late QAT, TTT adaptation): ops.linear on the STE
    fake-quantized weight (model.qat). The switch is a tensor the compiled graph reads (`qat_on`), so turning
    late QAT on mid-run changes no guard and recompiles nothing: a compiled train-mode forward always blends
    w + qat_on * (snapped w - w).detach(), exactly w when off (one fused elementwise pass per weight); eager runs
    branch on the host-side flag and skip the fake-quant while it is off;
  - otherwise ops.linear(x, weight), the weight cast to the activation dtype (bf16 under autocast).
"""
from __future__ import annotations

import torch
from torch import nn

from kernels.ops import get_ops
from model.qat import fake_quant_delta, fake_quant_int6
from kernels.int6_layout import packed_row_bytes


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, backend: str = "eager", zero_init: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.zero_init = zero_init  # read by GPT's global init (seed-spec §3.10)
        self.ops = get_ops(backend)
        self._fake_quant = False  # host-side mirror of qat_on: read without a device sync
        self.register_buffer("qat_on", torch.zeros(()), persistent=False)
        self.register_buffer("int6_packed", None, persistent=False)
        self.register_buffer("int6_scales", None, persistent=False)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's default; GPT's init overrides it

    @property
    def has_int6(self) -> bool:
        return self.int6_packed is not None

    def set_int6(self, packed: torch.Tensor, scales: torch.Tensor) -> None:
        """Use int6 weights (kernels.int6_layout: uint8 (out, 3*ceil(in/4)), per-row scales (out,)) from now on."""
        want = (self.out_features, packed_row_bytes(self.in_features))
        if packed.dtype != torch.uint8 or tuple(packed.shape) != want:
            raise ValueError(f"set_int6: expected uint8 packed weights of shape {want}, "
                             f"got {packed.dtype} {tuple(packed.shape)}")
        if scales.numel() != self.out_features:
            raise ValueError(f"set_int6: expected {self.out_features} row scales, got {scales.numel()}")
        device = self.weight.device
        self.int6_packed = packed.to(device).contiguous()
        self.int6_scales = scales.reshape(-1).to(device=device, dtype=torch.float32).contiguous()

    def clear_int6(self) -> None:
        self.int6_packed = None
        self.int6_scales = None

    @property
    def fake_quant(self) -> bool:
        """Whether train-mode forwards fake-quantize the weight (late QAT, TTT with fake-quant)."""
        return self._fake_quant

    @fake_quant.setter
    def fake_quant(self, enabled: bool) -> None:
        self._fake_quant = bool(enabled)
        with torch.no_grad():
            self.qat_on.fill_(float(self._fake_quant))

    def effective_weight(self) -> torch.Tensor:
        """The float weight the matmul uses: fake-quantized when late QAT is on in train mode."""
        if not self.training:
            return self.weight
        if torch.compiler.is_compiling():  # read the switch as data: no recompile when it flips
            return self.weight + self.qat_on.to(self.weight.dtype) * fake_quant_delta(self.weight)
        return fake_quant_int6(self.weight) if self._fake_quant else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_int6:
            return self.ops.int6_linear(x, self.int6_packed, self.int6_scales, self.in_features)
        return self.ops.linear(x, self.effective_weight())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, zero_init={self.zero_init}"

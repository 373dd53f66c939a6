"""Fake CUDA tensors under CUDA's own autocast: the model's GPU path with no GPU.

`FakeTensorMode` tensors on `torch.device("cuda")` carry shapes, dtypes and the CUDA dispatch keys but no
memory, so every op runs its meta/fake implementation with CUDA's autocast kernels in front of it. That needs
a CUDA build of torch (the CPU build refuses some CUDA factory calls) but no device. What cannot run: the
autograd engine (it asks the driver for a primary context) and anything that queries the device.
"""
from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype = torch.bfloat16):
    """CUDA autocast switched on without a device: what `torch.autocast("cuda", dtype)` does where CUDA is
    present (it refuses to turn on otherwise). Ops on (fake) CUDA tensors then meet CUDA's autocast kernels."""
    prev_enabled, prev_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev_enabled)
        torch.set_autocast_dtype("cuda", prev_dtype)


def can_fake_cuda() -> str | None:
    """None when this torch can run the model on fake CUDA tensors, else why not (one line)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build; the rehearsal needs a CUDA build (make rehearsal)"
    return None


def fake_cuda_model(mode: FakeTensorMode, preset: str = "seed", **overrides):
    """(config, GPT) with every parameter and buffer a fake CUDA tensor of `mode` (built on meta: no init), set
    up as the training job sets it up for `preset` (train.step.build_training_model: tok_emb's storage dtype,
    the orphan bigram scale trainable)."""
    from model.config import get_config
    from model.gpt import GPT
    from train.config import get_train_config
    from train.optim import orphan_parameters

    cfg = get_config(preset, **overrides)
    with torch.device("meta"):
        model = GPT(cfg)
        model.tok_emb.to(getattr(torch, get_train_config(preset).tok_emb_dtype))
    with mode:
        model = model.to_empty(device="cuda")
        for module in model.modules():  # the switches to_empty left uninitialized
            if hasattr(module, "qat_on"):
                module.qat_on.zero_()
    for p in orphan_parameters(model).values():
        p.requires_grad_(True)
    return cfg, model


def fake_tokens(mode: FakeTensorMode, seqs: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    with mode:
        x = torch.zeros(seqs, seq_len, dtype=torch.long, device="cuda")
        return x, torch.zeros_like(x)


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class OpLog(TorchDispatchMode):
    """Every op that does work below autograd (views, allocations and metadata queries excluded), with its
    inputs and outputs: the raw material of the byte, FLOP and memory projections."""

    SKIP_PREFIXES = ("aten::empty", "aten::detach", "aten::lift_fresh", "aten::_local_scalar_dense", "prim::")

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []  # (func, args, kwargs, out)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view and not func._schema.name.startswith(self.SKIP_PREFIXES):
            self.calls.append((func, args, kwargs, out))
        return out


def io_tensors(args, kwargs, out) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(input tensors, output tensors) of one logged call."""
    ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return ins, outs


class SavedActivations:
    """Bytes autograd saves for the backward during a forward (saved_tensors_hooks), each storage once.
    Parameters are not activations and are left out."""

    def __init__(self, params):
        self._params = {id(p) for p in params}
        self._storages: dict[int, int] = {}  # storage address (fake tensors have one) -> bytes

    def _pack(self, t):
        if id(t) not in self._params and not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            self._storages[storage._cdata] = storage.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

"""CUDA's autocast policy on CPU runs: the CPU suite sees the dtypes a GPU's `torch.autocast("cuda")` produces.

CPU and CUDA autocast cast different ops (CUDA runs `rms_norm`, `pow`, `softmax`, the norms and others in fp32;
the CPU does not), so a model that passes under `torch.autocast("cpu")` can still crash on a GPU. This module
re-registers the AutocastCPU kernel of every aten op that either backend's autocast touches:

  - an op with a CUDA autocast kernel (torch's own CUDA lists: the dispatcher's AutocastCUDA registrations)
    casts its floating inputs exactly as CUDA's kernel would. The cast is read off torch itself: the op runs
    once per dtype signature on fake CUDA tensors (no device needed) with and without CUDA autocast, and where
    autocast changes the result dtype, the real CPU inputs are cast to it (fp32 ops, lower-precision ops and
    the fp32-with-dtype-argument ops all come out this way; promote ops already agree with plain promotion);
  - an op that only the CPU's autocast touches falls through: CUDA leaves it alone.

`cuda_autocast_policy(dtype)` installs it and makes `kernels.autocast.autocast_for` give CPU autocast in
`dtype`; everything is undone on exit. Use float16 with the Triton policy (the interpreter computes fp16 correctly, bf16 not) and bfloat16 with
the eager one: CUDA's lists are the same for both. Eager runs only: torch.compile's tracing under it is not
supported (the fake-CUDA rehearsal, bench/rehearsal, covers compile).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from bench.rehearsal.fake_cuda import cuda_autocast
from kernels.autocast import set_cpu_autocast

_ELIGIBLE = (torch.float16, torch.bfloat16, torch.float32)  # autocast's is_eligible: floating, not fp64
_CPU_KEY = torch._C.DispatchKey.AutocastCPU


def autocast_ops(dispatch_key: str) -> list[str]:
    """aten op names ("aten::name[.overload]") with a kernel for `dispatch_key` ("AutocastCUDA", "AutocastCPU")."""
    return sorted(name for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key))


def _overload(name: str):
    base, _, overload = name[len("aten::"):].partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


def _signature(args, kwargs) -> tuple:
    """What decides an autocast cast: the dtypes of the tensor inputs and any dtype arguments."""
    leaves, spec = tree_flatten((args, kwargs))
    return (str(spec), tuple(leaf.dtype if isinstance(leaf, torch.Tensor) else leaf
                             for leaf in leaves if isinstance(leaf, (torch.Tensor, torch.dtype))))


def _first_float_dtype(out) -> torch.dtype | None:
    for leaf in tree_flatten(out)[0]:
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf.dtype
    return None


class _CastRecorder(TorchDispatchMode):
    """Records the dtypes the given input tensors are cast to (`aten._to_copy`) before the op's own work starts
    (autocast casts first; what the op's implementation casts later is its own business)."""

    def __init__(self, inputs: list[torch.Tensor]):
        super().__init__()
        self.inputs = inputs
        self.casts: set[tuple[int, torch.dtype]] = set()
        self.started = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") is not None and not self.started:
            for i, t in enumerate(self.inputs):
                if args[0] is t:
                    self.casts.add((i, kwargs["dtype"]))
        elif func.namespace != "prim":  # prim.device and the like are metadata queries, not work
            self.started = True
        return func(*args, **kwargs)


class CudaAutocastPolicy:
    """The AutocastCPU re-registration (see the module docstring); `cast_dtype` is the probe, cached."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self._cache: dict = {}
        self.library: torch.library.Library | None = None
        self.probed_ops: set[str] = set()  # ops whose cast was read off CUDA autocast during the run

    def cast_dtype(self, op, args, kwargs) -> torch.dtype | None:
        """The dtype CUDA autocast casts this call's floating inputs to, or None when it changes nothing."""
        key = (op, _signature(args, kwargs))
        if key not in self._cache:
            self._cache[key] = self._probe(op, args, kwargs)
            self.probed_ops.add(str(op))
        return self._cache[key]

    def _probe(self, op, args, kwargs) -> torch.dtype | None:
        """Run the op on fake CUDA twins of the inputs with CUDA autocast on and off. The inputs autocast casts
        (lower-precision, fp32 and promote policies) name the dtype; where it casts none but the result's
        dtype changes (the fp32 policies that pass a dtype argument instead), the result's dtype is it."""
        with FakeTensorMode():
            fake = tree_map(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")
                            if isinstance(t, torch.Tensor) else t, (args, kwargs))
            inputs = [t for t in tree_flatten(fake)[0] if isinstance(t, torch.Tensor)]
            with cuda_autocast(self.dtype), _CastRecorder(inputs) as with_autocast:
                on = _first_float_dtype(op(*fake[0], **fake[1]))
            try:
                with _CastRecorder(inputs) as without:
                    off = _first_float_dtype(op(*fake[0], **fake[1]))
            except (RuntimeError, TypeError):  # e.g. mixed dtypes that only autocast makes legal
                off, without = None, None
        autocast_casts = {dtype for _, dtype in with_autocast.casts - (without.casts if without else set())}
        if len(autocast_casts) > 1 and self.dtype in autocast_casts:
            # a lower-precision op whose implementation then upcasts an input that needed no cast (the SDPA
            # math path): fp32 ops never cast to the low dtype, lower-precision ops cast only to it
            autocast_casts = {self.dtype}
        if len(autocast_casts) > 1:
            raise AssertionError(f"{op}: CUDA autocast cast its inputs to several dtypes {autocast_casts}")
        if autocast_casts:
            return autocast_casts.pop()
        return on if on is not None and on != off else None

    def _kernel(self, op):
        def run(*args, **kwargs):
            dtype = self.cast_dtype(op, args, kwargs)
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_CPU_KEY)):
                if dtype is not None:
                    args, kwargs = tree_map(lambda t: t.to(dtype) if isinstance(t, torch.Tensor)
                                            and t.dtype in _ELIGIBLE else t, (args, kwargs))
                return op(*args, **kwargs)
        return run

    def install(self) -> None:
        cuda_ops = autocast_ops("AutocastCUDA")
        cpu_only = sorted(set(autocast_ops("AutocastCPU")) - set(cuda_ops))
        self.library = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
            warnings.simplefilter("ignore")
            for name in cuda_ops:
                self.library.impl(name[len("aten::"):], self._kernel(_overload(name)), "AutocastCPU")
            for name in cpu_only:
                self.library.impl(name[len("aten::"):], torch.library.fallthrough_kernel, "AutocastCPU")

    def uninstall(self) -> None:
        if self.library is not None:
            self.library._destroy()
            self.library = None


@contextlib.contextmanager
def cuda_autocast_policy(dtype: torch.dtype = torch.bfloat16):
    """CUDA's autocast lists on the CPU (see the module docstring), with `kernels.autocast.autocast_for` giving
    `torch.autocast("cpu", dtype)`: every forward the code runs under autocast (training, validation, scoring,
    TTT) sees CUDA's dtypes, and nothing else (the optimizer steps, as on a GPU). Yields the policy."""
    policy = CudaAutocastPolicy(dtype)
    policy.install()
    set_cpu_autocast(lambda: torch.autocast("cpu", dtype=dtype))
    try:
        yield policy
    finally:
        set_cpu_autocast(None)
        policy.uninstall()

"""Compile one case for one GPU arch with Triton's own compiler and read what ptxas made of it.

The argument specialization is Triton's runtime path (`create_function_from_signature` + `_pack_args`, the
code a launch runs), so the compiled kernel is the one a GPU would get. Triton runs ptxas itself; with
`knobs.nvidia.dump_ptxas_log` it prints ptxas's `-v` log, which this module captures and parses for
registers and spill bytes. Shared memory is Triton's metadata; the dot lowering is read from the PTX.
Needs TRITON_INTERPRET=0 before any kernel module is imported (bench/aot/__main__.py sees to it); every
compile bypasses Triton's cache (a cache hit would not run ptxas).
"""
from __future__ import annotations

import contextlib
import io
import re
import time
from dataclasses import dataclass

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

ARCHS = {"sm_80": 80, "sm_90a": 90}  # A100; H100/H200 (Triton targets sm_90a for capability 90)


@dataclass
class Result:
    """What one compile gave; `error` is set (and the rest zero) when it failed."""

    regs: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0           # bytes of shared memory per block (Triton's metadata)
    dot: str = "-"          # "wgmma", "mma", "fma" (a tl.dot on CUDA cores) or "-" (no dot)
    compile_s: float = 0.0
    num_warps: int = 4
    error: str | None = None

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from a `ptxas -v` log (maxima over its functions)."""
    regs = [int(m) for m in _REGS.findall(log)]
    spills = [(int(s), int(ld)) for s, ld in _SPILLS.findall(log)]
    if not regs:
        raise ValueError(f"no 'Used N registers' line in the ptxas log: {log[:200]!r}")
    return max(regs), max((s for s, _ in spills), default=0), max((ld for _, ld in spills), default=0)


def dot_kind(ttir: str, ptx: str) -> str:
    """How the kernel's tl.dot lowered: tensor-core wgmma (sm_90), mma.sync, plain FMAs, or "-" with no dot."""
    if "tt.dot" not in ttir:
        return "-"
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma"
    return "fma"


def _specialize(fn, target: GPUTarget, args: tuple, kwargs: dict):
    """(ASTSource, options) exactly as JITFunction.run builds them for these arguments, without a driver."""
    backend = make_backend(target)
    kwargs = {"debug": False, **kwargs}
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), options


def compile_case(fn, args: tuple, kwargs: dict, arch: str) -> Result:
    """Compile fn with these launch arguments for `arch` ("sm_80" / "sm_90a"); never raises on compile errors."""
    target = GPUTarget("cuda", ARCHS[arch], 32)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        src, options = _specialize(fn, target, args, kwargs)
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True  # a cache hit would skip ptxas (no log, no compile time)
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=target, options=options.__dict__)
        regs, stores, loads = parse_ptxas_log(log.getvalue())
    except Exception as exc:  # a compile error is a reported result, not a crash of the report
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        return Result(compile_s=time.perf_counter() - start, error=f"{type(exc).__name__}: {first}"[:300])
    finally:
        knobs.nvidia.dump_ptxas_log = False
        knobs.compilation.always_compile = False
    return Result(regs=regs, spill_stores=stores, spill_loads=loads, smem=kernel.metadata.shared,
                  dot=dot_kind(kernel.asm["ttir"], kernel.asm["ptx"]), compile_s=time.perf_counter() - start,
                  num_warps=kernel.metadata.num_warps)

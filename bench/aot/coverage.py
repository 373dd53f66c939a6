"""Which Triton kernels of `kernels/` no spec module compiles, so a new kernel cannot slip past the report.

A kernel is a module-level JIT function or autotuner of a `kernels/*.py` module whose name ends in `_kernel`
(the project's naming: device helpers called from kernels, like `_rope_tile`, do not); the modules that hold no
kernels (the eager twins, the op switch) are skipped.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from triton.runtime.jit import JITFunction

KERNELS_DIR = Path(__file__).resolve().parents[2] / "kernels"
NO_KERNELS = {"__init__", "reference", "ops", "triton_ops", "autocast"}


def _jit_fn(obj):
    """The JITFunction under an autotuner / heuristics wrapper, or None for anything else."""
    while obj is not None and not isinstance(obj, JITFunction):
        obj = getattr(obj, "fn", None) if hasattr(obj, "configs") or hasattr(obj, "values") else None
    return obj


def kernels_of_package() -> tuple[dict[str, object], list[str]]:
    """({"module.name": JITFunction} for every kernel in kernels/*.py, ["module: import error", ...])."""
    found, errors = {}, []
    for path in sorted(KERNELS_DIR.glob("*.py")):
        if path.stem in NO_KERNELS:
            continue
        try:
            module = importlib.import_module(f"kernels.{path.stem}")
        except Exception as exc:  # a module mid-edit must not hide the others
            errors.append(f"kernels.{path.stem}: {type(exc).__name__}: {exc}"[:300])
            continue
        for name, obj in vars(module).items():
            fn = _jit_fn(obj)
            if fn is not None and fn.__name__.endswith("_kernel") and fn.__module__ == module.__name__:
                found[f"{path.stem}.{fn.__name__}"] = fn
    return found, errors


def uncovered(cases: list) -> tuple[list[str], list[str]]:
    """(kernels no case compiles, import errors)."""
    compiled = {id(c.fn) for c in cases}
    found, errors = kernels_of_package()
    return sorted(name for name, fn in found.items() if id(fn) not in compiled), errors

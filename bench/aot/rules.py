"""When the ahead-of-time report fails: what would break or slow down on the GPU, judged per compiled case.

- a compile error (Triton or ptxas), for any selectable config;
- shared memory above the arch's opt-in per-block limit (A100 163 KB, H100 227 KB): the launch would fail
  with OutOfResources. Cases reach the report only when the autotuner does not prune them, so every one counts;
- registers x threads above the 64K-register file of an SM (a launch failure as well);
- spills in a default config (one launched without autotuning): nothing else would ever be chosen there.
  Spills in an autotuned config are reported but pass: the tuner measures them and picks a faster one.
"""
from __future__ import annotations

SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}
REGISTER_FILE = 64 * 1024  # 32-bit registers per SM (and per block) on sm_80 and sm_90


def violations(result, arch: str, default: bool) -> list[str]:
    """Why this compile fails the report (empty when it passes)."""
    if result.error:
        return [f"compile error: {result.error}"]
    problems = []
    if result.smem > SMEM_LIMIT[arch]:
        problems.append(f"shared memory {result.smem} B > {arch} limit {SMEM_LIMIT[arch]} B")
    threads = 32 * result.num_warps
    if result.regs * threads > REGISTER_FILE:
        problems.append(f"{result.regs} registers x {threads} threads > {REGISTER_FILE}")
    if default and result.spills:
        problems.append(f"default config spills {result.spill_stores} B stores / {result.spill_loads} B loads")
    return problems

"""Ahead-of-time kernel report: see the GPU from the CPU.

`python -m bench.aot` compiles every Triton kernel of `kernels/` at every config its launchers can select
(each autotune config the autotuner keeps, the bf16 and fp32 paths, the seed model's constexpr variants) for
sm_80 (A100) and sm_90a (H100/H200), with no GPU: Triton's own compiler and the ptxas bundled in its wheel.
Per kernel, config and arch it reports registers per thread, spill bytes, shared memory, what the dots became
(wgmma / mma / fma) and compile seconds, and exits non-zero on what would fail or slow down on the GPU
(bench.aot.rules).

Layout: `case` (what to compile), one spec module per kernel family (`attention`, `mlp`, `int6_matmul`,
`cross_entropy`, `rmsnorm`, `rope`: each a `cases()` reading the configs from the kernel module itself),
`compile` (Triton + ptxas), `rules`, `report` (text and markdown tables), `__main__` (the CLI).
"""

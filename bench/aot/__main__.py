"""`python -m bench.aot [--arch A] [--spec S] [--only TEXT] [--jobs N] [--write MD] [--json FILE] [--compare F]`.

Compiles every kernel config for sm_80 and sm_90a (no GPU needed), prints one line per compile, and exits 1
when a row breaks a rule of bench/aot/rules.py (compile error, shared memory or registers over the limit,
a spilling default config) or a spec module cannot enumerate its cases; a kernel of kernels/ that no spec
module compiles is a warning. --write regenerates bench/AOT.md; --json keeps the rows, and --compare adds a
report made with another Triton (e.g. the GPU image's 3.6 via PYTHONPATH) to the markdown.
"""
from __future__ import annotations

import os
import sys
import tempfile

# Kernels must be decorated as GPU JIT functions (kernels/__init__.py only setdefaults the interpreter flag), and
# every compile must really run ptxas (an empty Triton cache), so both are fixed before anything imports triton.
os.environ["TRITON_INTERPRET"] = "0"
_CACHE = tempfile.TemporaryDirectory(prefix="triton-aot-")
os.environ["TRITON_CACHE_DIR"] = _CACHE.name

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

SPEC_MODULES = ("attention", "mlp", "int6_matmul", "cross_entropy", "rmsnorm", "rope", "residual_norm")
_CASES: list = []  # filled before the worker processes fork; workers receive indices into it


def parse_args(argv=None) -> argparse.Namespace:
    from bench.aot.compile import ARCHS

    parser = argparse.ArgumentParser(prog="python -m bench.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), action="append", help="only this arch (repeatable)")
    parser.add_argument("--spec", choices=SPEC_MODULES, action="append",
                        help="only this spec module (repeatable; default: all)")
    parser.add_argument("--only", metavar="TEXT", help="only cases whose 'kernel variant config' contains TEXT")
    parser.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    parser.add_argument("--write", metavar="MD", help="write the markdown report here (e.g. bench/AOT.md)")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON here")
    parser.add_argument("--compare", metavar="FILE", help="a --json report from another Triton, for the markdown")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.compare and not Path(args.compare).is_file():
        parser.error(f"--compare: no such file {args.compare}")
    return args


def collect_cases(specs, only: str | None) -> tuple[list, list[str]]:
    """(cases of the spec modules `specs`, matching `only`; "module: error" for each spec module that failed)."""
    from bench.aot.case import seed_shapes

    shapes = seed_shapes()
    cases, errors = [], []
    for name in specs:
        try:
            cases += importlib.import_module(f"bench.aot.{name}").cases(shapes)
        except Exception as exc:  # a spec out of step with its kernel file fails the report, not the others
            errors.append(f"bench.aot.{name}: {type(exc).__name__}: {exc}"[:300])
    if only:
        cases = [c for c in cases if only in f"{c.kernel} {c.variant} {c.config}"]
    return cases, errors


def _compile_job(job: tuple[int, str]):
    from bench.aot.compile import compile_case

    index, arch = job
    case = _CASES[index]
    return index, arch, compile_case(case.fn, case.args, case.kwargs, arch)


def run(cases: list, arches: list[str], jobs: int, progress) -> list:
    """Rows for every (case, arch), in case order; compiles in `jobs` forked processes."""
    from bench.aot.report import Row
    from bench.aot.rules import violations

    _CASES[:] = cases
    work = [(i, a) for i in range(len(cases)) for a in arches if not cases[i].archs or a in cases[i].archs]
    results = {}
    if jobs == 1:
        done = map(_compile_job, work)
    else:
        pool = multiprocessing.get_context("fork").Pool(jobs)
        done = pool.imap_unordered(_compile_job, work)
    for n, (i, arch, res) in enumerate(done, 1):
        results[i, arch] = res
        progress(n, len(work), cases[i], arch, res)
    if jobs > 1:
        pool.close()
        pool.join()
    rows = []
    for i, arch in work:
        c, res = cases[i], results[i, arch]
        rows.append(Row(c.kernel, c.variant, c.config, arch, c.default, res.regs, res.spill_stores, res.spill_loads,
                        res.smem, res.dot, round(res.compile_s, 2), res.error, violations(res, arch, c.default)))
    return rows


def _meta(args, argv, rows, wall_s, shapes) -> dict:
    import torch
    import triton
    from triton.backends.nvidia.compiler import get_ptxas_version

    return {"command": " ".join(["python -m bench.aot"] + list(argv)), "triton": triton.__version__,
            "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "ptxas": get_ptxas_version().strip().splitlines()[-1], "wall_s": round(wall_s, 1), "jobs": args.jobs,
            "cpus": os.cpu_count(),
            "shapes": ", ".join(f"{k} {v}" for k, v in vars(shapes).items())}


def main(argv=None) -> int:
    from bench.aot import report
    from bench.aot.case import seed_shapes
    from bench.aot.compile import ARCHS
    from bench.aot.coverage import uncovered
    from common.atomic import atomic_write

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.perf_counter()
    cases, spec_errors = collect_cases(args.spec or SPEC_MODULES, args.only)
    partial = bool(args.only or args.spec)  # a partial run cannot judge which kernels no spec covers
    missing, import_errors = uncovered(cases) if not partial else ([], [])
    if not cases and not spec_errors:
        print(f"bench.aot: no case matches --only {args.only!r}", file=sys.stderr)
        return 2
    arches = args.arch or list(ARCHS)

    def progress(n, total, case, arch, res):
        status = "ERROR" if res.error else f"{res.regs} regs, {res.spills} B spills, {res.smem} B smem, {res.dot}"
        print(f"[{n}/{total}] {case.kernel} {case.variant} {case.config} {arch}: {status} ({res.compile_s:.1f} s)",
              file=sys.stderr, flush=True)

    rows = run(cases, arches, args.jobs, progress)
    wall_s = time.perf_counter() - start
    print(report.text_table(rows))
    failing = [r for r in rows if r.violations]
    for r in failing:
        print(f"FAIL {r.kernel} {r.variant} {r.config} {r.arch}: {'; '.join(r.violations)}")
    for err in spec_errors:
        print(f"FAIL spec {err}")
    for name in missing:
        print(f"WARNING kernels.{name} is compiled by no spec module of bench/aot")
    for err in import_errors:
        print(f"WARNING cannot import {err}")
    meta = _meta(args, argv, rows, wall_s, seed_shapes())
    meta.update(spec_errors=spec_errors, uncovered=missing, import_errors=import_errors,
                exit=1 if failing or spec_errors else 0)
    print(f"bench.aot: {len(rows)} compiles, {len(failing)} failing rows, {len(spec_errors)} failing specs, "
          f"{len(missing)} kernels without a spec, {wall_s:.0f} s wall, triton {meta['triton']}")
    if args.json:
        atomic_write(args.json, [report.to_json(rows, meta).encode()])
    if args.write:
        other = report.rows_from_json(Path(args.compare).read_text()) if args.compare else None
        atomic_write(args.write, [report.markdown(rows, meta, other).encode()])
    return meta["exit"]


if __name__ == "__main__":
    sys.exit(main())

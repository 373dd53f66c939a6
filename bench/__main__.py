"""`python -m bench [--quick] [--only PATTERN] [--json FILE] [--no-history]`: run the benchmark suite.

Full mode (needs CUDA) runs the pytest-benchmark suites in bench/, then appends one record to
bench/history.jsonl and regenerates BENCHMARKS.md and bench/history.png. --quick runs every case once
at tiny shapes (on CPU under the Triton interpreter), claims no figures and writes no history; it
fails when an op module does not import, so CI notices a suite that has rotted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    from common.cli_errors import ArgumentParser  # argparse errors as one line

    parser = ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one call each, no figures (CPU CI)")
    parser.add_argument("--only", metavar="PATTERN", help="run only cases matching this pytest -k expression")
    parser.add_argument("--json", metavar="FILE", help="also keep pytest-benchmark's JSON report here")
    parser.add_argument("--no-history", action="store_true", help="do not append to bench/history.jsonl")
    return parser.parse_args(argv)


def pytest_args(args: argparse.Namespace, json_path: str | None) -> list[str]:
    argv = [str(BENCH_DIR), "-p", "no:cacheprovider", "-rs", "--rootdir", str(BENCH_DIR.parent)]
    if args.only:
        argv += ["-k", args.only]
    if args.quick:
        argv += ["--bench-quick", "--benchmark-disable"]
    if json_path:
        argv += [f"--benchmark-json={json_path}"]
    return argv


def measured_cases(json_path: str) -> tuple[list[dict], float | None]:
    """Case figures and the bf16 peak from pytest-benchmark's JSON (the first case of each test, stored there by
    bench/conftest.py). Full runs read the case log instead (bench.case_log), which holds every case."""
    report = json.loads(Path(json_path).read_text())
    infos = [b["extra_info"] for b in report.get("benchmarks", []) if "ms" in b.get("extra_info", {})]
    peak = next((i["bf16_peak_tflops"] for i in infos if i.get("bf16_peak_tflops")), None)
    keys = ("case", "variant", "shape", "ms", "tokens_per_s", "tflops", "gbps", "peak_mib", "mfu")
    return [{k: i.get(k) for k in keys} for i in infos], peak


def main(argv=None) -> int:
    """Run the suite; errors (a bad --json path, a missing GPU, ...) are one line (common.cli_errors)."""
    from common.cli_errors import run_cli

    args = parse_args(argv)
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.json:
        from common.cli_errors import check_output_file
        check_output_file(args.json, overwrite=True, flag="--json")  # before minutes of benchmarks
    import torch  # after parsing, so --help stays fast

    if not args.quick and not torch.cuda.is_available():
        print("error: python -m bench: full benchmarks need a CUDA GPU; on CPU run `python -m bench --quick`",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before pytest imports any kernel module
    import pytest

    if args.quick:
        start = time.perf_counter()
        code = int(pytest.main(pytest_args(args, args.json)))
        print(f"quick mode: no figures claimed ({time.perf_counter() - start:.0f} s, pytest exit {code})")
        return code
    from bench import case_log

    with tempfile.TemporaryDirectory() as tmp:
        json_path = args.json or os.path.join(tmp, "bench.json")
        log_path = os.environ.setdefault(case_log.ENV_VAR, os.path.join(tmp, "cases.jsonl"))
        code = int(pytest.main(pytest_args(args, json_path)))
        cases, peak = case_log.read_cases(log_path)
    if args.no_history or not cases:
        print(f"python -m bench: {len(cases)} cases measured; history not written"
              + (" (--no-history)" if args.no_history else ""))
        return code
    from bench import history

    record = history.make_record(cases, peak, history.environment(), history.git_sha(), complete=code == 0)
    history.append_record(record)
    for note in history.regenerate():
        print(f"python -m bench: {note}")
    print(f"python -m bench: appended {len(cases)} cases to {history.HISTORY_PATH}; "
          f"regenerated {history.MARKDOWN_PATH}")
    return code


if __name__ == "__main__":
    sys.exit(main())

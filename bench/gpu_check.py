"""`python -m bench.gpu_check --out DIR [--budget-s 480]`: the one prepared check for a lent or rented GPU.

A GPU is lent to about one working session in five, for minutes, so a single call must bring back a full record.
On a machine with CUDA torch already installed (no venv, no pip, no network), from the repository root, it:
  1. prints the device, driver, Python, torch, triton and CUDA versions (and says if zstandard is missing);
  2. runs the GPU tests — every kernel test file on CUDA (bf16 there) and each `gpu`-marked test — with a
     JUnit XML in DIR;
  3. runs the benchmark cases that matter most, in this order (bench.gpu_stages): (a) the seed model's training
     step, (b) attention, (c) memory-bound ops' GB/s beside a copy ceiling, (d) int6 matmul, (e) TTT scoring and
     training with the projected time of the full validation run.
Every stage is a subprocess under a time guard (its share of what is left of the budget), so the whole check
ends within the budget and says what it skipped or cut short; every finished benchmark case is kept even when
its stage is cut (bench.case_log). Results: DIR/gpu_check.json, DIR/gpu_check.log, DIR/junit_*.xml.

`python -m bench.gpu_check --import DIR` appends the run's figures to bench/history.jsonl and regenerates
BENCHMARKS.md. `--dry-run` runs the same plumbing on the CPU at the quick shapes (CI): every stage must select
at least one test and pass; it measures nothing and its JSON cannot be imported.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import gpu_stages

ROOT = Path(__file__).resolve().parents[1]
RESULT_NAME = "gpu_check.json"
LOG_NAME = "gpu_check.log"
MIN_STAGE_S = 15  # a stage with less time than this left is skipped, not started


class Log:
    """Print to stdout and append to DIR/gpu_check.log, flushed line by line (a killed run keeps its log)."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def environment() -> dict:
    """Device, driver and library versions; `zstandard` is reported because the artifact format needs it."""
    import torch
    import triton

    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda, "device": "cpu", "driver": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), sm_count=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1),
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        import zstandard  # noqa: F401
        env["zstandard"] = True
    except ImportError:
        env["zstandard"] = False
    return env


def git_sha() -> str:
    from bench.history import git_sha as sha
    return sha()


def run_stage(stage: gpu_stages.Stage, limit_s: float, workdir: Path, out: Path, dry_run: bool, log: Log) -> dict:
    """Run one stage's pytest subprocess under `limit_s`; return its summary (status, counts, cases, seconds)."""
    junit = (out if stage.kind == "tests" else workdir) / f"junit_{stage.name}.xml"
    cases_path = workdir / f"cases_{stage.name}.jsonl"
    argv = [sys.executable, "-m", "pytest", *stage.pytest_args(dry_run), f"--junitxml={junit}",
            "-p", "no:cacheprovider", "--rootdir", str(ROOT)]
    env = dict(os.environ, **{gpu_stages.case_log.ENV_VAR: str(cases_path)})
    if dry_run and not _cuda():
        env.setdefault("TRITON_INTERPRET", "1")
    log(f"== stage {stage.name} ({stage.title}): limit {limit_s:.0f} s")
    log("   $ " + " ".join(argv[1:]))
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
        status = "passed" if proc.returncode == 0 else f"failed (pytest exit {proc.returncode})"
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        status = f"cut at {limit_s:.0f} s (time guard)"
        output = _text(err.stdout) + _text(err.stderr)
    seconds = time.perf_counter() - start
    lines = output.strip().splitlines()
    log.file.write("".join(f"   | {line}\n" for line in lines[:-25]))  # the whole output in the log file
    for line in lines[-25:]:  # its tail on the screen too
        log("   | " + line)
    counts = gpu_stages.junit_counts(junit)
    cases, peak = gpu_stages.case_log.read_cases(cases_path)
    log(f"   -> {status} in {seconds:.0f} s; tests {counts}; {len(cases)} cases measured")
    return {"name": stage.name, "title": stage.title, "status": status, "seconds": round(seconds, 1),
            "tests": counts, "measured": len(cases), "cases": cases, "bf16_peak_tflops": peak}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def run_check(out: Path, budget_s: float, dry_run: bool, only: list[str] | None) -> dict:
    """All stages in order within `budget_s`; writes and returns the result dict."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / LOG_NAME)
    if not dry_run and not _cuda():
        raise SystemExit("python -m bench.gpu_check: no CUDA device here; use --dry-run on a CPU machine")
    env = environment()
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    log(f"gpu_check {date}  {'DRY RUN (quick shapes, nothing measured)' if dry_run else ''}")
    log("environment: " + json.dumps(env, sort_keys=True))
    if not env["zstandard"]:
        log("note: zstandard is not installed: artifact tests will fail; see README 'GPU check' for carrying it")
    stages = [s for s in gpu_stages.STAGES if not only or s.name in only]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, stage in enumerate(stages):
            left = budget_s - (time.perf_counter() - started)
            limit = gpu_stages.stage_limit(stage, left, stages[index:])
            if limit < MIN_STAGE_S:
                log(f"== stage {stage.name} ({stage.title}): SKIPPED, {left:.0f} s of budget left")
                results.append({"name": stage.name, "title": stage.title, "status": "skipped (out of budget)",
                                "seconds": 0.0, "tests": {}, "measured": 0, "cases": [], "bf16_peak_tflops": None})
                continue
            results.append(run_stage(stage, limit, Path(tmp), out, dry_run, log))
    cases = [c for r in results for c in r["cases"]]
    peak = next((r["bf16_peak_tflops"] for r in results if r["bf16_peak_tflops"]), None)
    result = {"date": date, "git_sha": git_sha(), "dry_run": dry_run, "budget_s": budget_s,
              "seconds": round(time.perf_counter() - started, 1), "environment": env, "bf16_peak_tflops": peak,
              "stages": [{k: v for k, v in r.items() if k != "cases"} for r in results], "cases": cases,
              "projections": gpu_stages.projections(cases)}
    (out / RESULT_NAME).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    log(gpu_stages.summary_table(result))
    return result


def problems(result: dict) -> list[str]:
    """What makes a check's exit non-zero: a failed or cut stage; in a dry run also a stage selecting no test."""
    found = []
    for stage in result["stages"]:
        if not stage["status"].startswith(("passed", "skipped")):
            found.append(f"stage {stage['name']}: {stage['status']}")
        if result["dry_run"] and stage["tests"].get("tests", 0) == 0:
            found.append(f"stage {stage['name']}: selected no test")
    return found


def import_result(directory: Path, history_path: Path | None = None, markdown_path: Path | None = None) -> str:
    """Append the figures of DIR/gpu_check.json to the benchmark history and regenerate BENCHMARKS.md."""
    from bench import history

    path = directory / RESULT_NAME
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"python -m bench.gpu_check --import: cannot read {path}: {err}")
    if result.get("dry_run"):
        raise SystemExit(f"python -m bench.gpu_check --import: {path} is a dry run; it measured nothing")
    if not result.get("cases"):
        raise SystemExit(f"python -m bench.gpu_check --import: {path} holds no measured case")
    env = {k: result["environment"].get(k) for k in ("device", "torch", "triton", "cuda")}
    sha = result.get("git_sha") or "unknown"
    if sha == "unknown":  # the device gets a copy of the working tree without .git: the importing checkout's sha
        sha = history.git_sha()
    record = history.make_record(result["cases"], result.get("bf16_peak_tflops"), env, sha,
                                 complete=not problems(result), date=result["date"])
    record["gpu_check"] = {"environment": result["environment"], "budget_s": result["budget_s"],
                           "seconds": result["seconds"], "projections": result["projections"],
                           "stages": result["stages"]}
    history_path = history_path or history.HISTORY_PATH
    markdown_path = markdown_path or history.MARKDOWN_PATH
    history.append_record(record, history_path)
    notes = history.regenerate(history_path, markdown_path, Path(history_path).with_suffix(".png"))
    return "; ".join([f"appended {len(record['cases'])} cases to {history_path}, regenerated {markdown_path}"]
                     + notes)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, metavar="DIR", help="run the check; results go to DIR")
    action.add_argument("--import", dest="import_dir", type=Path, metavar="DIR",
                        help="append DIR/gpu_check.json to bench/history.jsonl and regenerate BENCHMARKS.md")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check (s)")
    parser.add_argument("--dry-run", action="store_true", help="CPU plumbing check at quick shapes (CI)")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(s.name for s in gpu_stages.STAGES)}")
    parser.add_argument("--history", type=Path, help="history file for --import (default bench/history.jsonl)")
    parser.add_argument("--markdown", type=Path, help="markdown file for --import (default BENCHMARKS.md)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    known = {s.name for s in gpu_stages.STAGES}
    if args.stages and not set(args.stages.split(",")) <= known:
        parser.error(f"--stages: unknown stage(s) {sorted(set(args.stages.split(',')) - known)}; known {sorted(known)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.import_dir:
        print("python -m bench.gpu_check: " + import_result(args.import_dir, args.history, args.markdown))
        return 0
    result = run_check(args.out, args.budget_s, args.dry_run, args.stages.split(",") if args.stages else None)
    found = problems(result)
    for problem in found:
        print(f"python -m bench.gpu_check: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

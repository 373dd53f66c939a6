"""The benchmark cases of a run, one JSON line each, written the moment each case is measured.

`measure` (bench/conftest.py) appends every case's figures to the file named by $TRITON_GOLF_BENCH_CASES
(when set) and flushes, so a run stopped by a time guard or a crash keeps every case it finished. A test
may measure several cases (a training step's forward+backward and its whole step share one compiled model),
which pytest-benchmark's one-result-per-test JSON cannot hold; this log can. `python -m bench` and
`python -m bench.gpu_check` read their figures from it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

ENV_VAR = "TRITON_GOLF_BENCH_CASES"
CASE_KEYS = ("case", "variant", "shape", "ms", "tokens_per_s", "tflops", "gbps", "peak_mib", "mfu")


def append_case(figures: dict, bf16_peak_tflops: float | None = None) -> None:
    """Append one measured case to the log named by $TRITON_GOLF_BENCH_CASES (no-op when unset)."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    line = {k: figures.get(k) for k in CASE_KEYS}
    line["bf16_peak_tflops"] = bf16_peak_tflops
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_cases(path: str | os.PathLike) -> tuple[list[dict], float | None]:
    """(cases, bf16 peak) from a case log; an absent file is no cases, a torn last line is dropped.

    A case whose time is not a positive finite number is an error: a figure like that must never reach the
    history."""
    path = Path(path)
    if not path.exists():
        return [], None
    cases, peak = [], None
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(lines, 1):
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            if number == len(lines):  # the writer was killed mid-line: that case was not finished
                break
            raise ValueError(f"{path}:{number}: not a JSON case line")
        ms = line.get("ms")
        if not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms <= 0:
            raise ValueError(f"{path}:{number}: case {line.get('case')!r} [{line.get('variant')}] has no valid time")
        peak = line.get("bf16_peak_tflops") or peak
        cases.append({k: line.get(k) for k in CASE_KEYS})
    return cases, peak

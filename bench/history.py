"""Benchmark history: one JSON record per full GPU run in bench/history.jsonl, rendered to BENCHMARKS.md
and bench/history.png.

A record is {"date", "git_sha", "device", "torch", "triton", "cuda", "bf16_peak_tflops", "complete",
"cases": [{"case", "variant", "shape", "ms", "tokens_per_s", "tflops", "gbps", "peak_mib", "mfu"}]}.
BENCHMARKS.md shows, for every case, the figures of the latest record that measured it (variants side
by side), then the headline cases (training step, TTT phases) across all records.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import tempfile
from pathlib import Path

from common.atomic import atomic_write

ROOT = Path(__file__).resolve().parents[1]
HISTORY_PATH = ROOT / "bench" / "history.jsonl"
MARKDOWN_PATH = ROOT / "BENCHMARKS.md"
PLOT_PATH = ROOT / "bench" / "history.png"

VARIANT_ORDER = ("eager", "compile", "sdpa_flash", "sdpa_cudnn", "dequant_once", "triton", "triton+compile")
BASELINE_VARIANTS = ("eager", "compile", "sdpa_flash", "sdpa_cudnn", "dequant_once")
HEADLINE_PREFIXES = ("train_step", "ttt_")
FIGURE_KEYS = ("ms", "tokens_per_s", "tflops", "gbps", "peak_mib", "mfu")
NO_RECORD_TEXT = (
    "No GPU record yet. Produce one with `make bench` (= `python -m bench`) on a CUDA machine: it appends a record "
    "to `bench/history.jsonl` and regenerates this file and `bench/history.png`. "
    "`python -m bench --quick` (CPU CI) only proves the suite runs and claims no figures."
)


class HistoryError(ValueError):
    """bench/history.jsonl holds a line that is not a benchmark record."""


def git_sha(root: Path = ROOT) -> str:
    """`git rev-parse HEAD`, with "-dirty" when the working tree has uncommitted changes; "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def environment() -> dict:
    """Device name and library versions for a record."""
    import torch
    import triton

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda}


def make_record(cases: list[dict], bf16_peak_tflops: float | None, env: dict, sha: str,
                complete: bool = True, date: str | None = None) -> dict:
    """Assemble one history record from measured case figures."""
    if not cases:
        raise ValueError("make_record: no measured cases")
    for case in cases:
        missing = {"case", "variant"} - case.keys()
        if missing:
            raise ValueError(f"make_record: case figures missing {sorted(missing)}: {case}")
    date = date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {"date": date, "git_sha": sha, **env, "bf16_peak_tflops": bf16_peak_tflops,
            "complete": complete, "cases": cases}


def load_history(path: Path = HISTORY_PATH) -> list[dict]:
    """All records in `path`, oldest first (an absent or empty file is an empty history)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise HistoryError(f"{path}:{number}: not valid JSON ({err})") from err
        if not isinstance(record, dict) or not isinstance(record.get("cases"), list):
            raise HistoryError(f"{path}:{number}: not a benchmark record (needs a 'cases' list)")
        records.append(record)
    return records


def append_record(record: dict, path: Path = HISTORY_PATH) -> None:
    """Append `record` as one JSON line (the file is rewritten atomically, never left half-written)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, [old, (json.dumps(record, sort_keys=True) + "\n").encode()])


def latest_figures(records: list[dict]) -> dict[tuple[str, str], tuple[dict, dict]]:
    """(case, variant) -> (figures, record) from the newest record that measured that pair."""
    latest = {}
    for record in records:
        for figures in record["cases"]:
            latest[(figures["case"], figures["variant"])] = (figures, record)
    return latest


def _ordered_variants(variants) -> list[str]:
    known = [v for v in VARIANT_ORDER if v in variants]
    return known + sorted(set(variants) - set(VARIANT_ORDER))


def _fmt(value: float | None, kind: str = "") -> str:
    if value is None:
        return "—"
    if kind == "tokens":
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if value >= scale:
                return f"{value / scale:.3g}{unit}"
        return f"{value:.3g}"
    if kind == "percent":
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def _short_sha(sha: str) -> str:
    return sha[:12] + ("-dirty" if sha.endswith("-dirty") else "")


def _speedup(row: dict[str, dict]) -> str:
    triton = [f["tokens_per_s"] for v, f in row.items() if v.startswith("triton") and f.get("tokens_per_s")]
    base = [f["tokens_per_s"] for v, f in row.items() if v in BASELINE_VARIANTS and f.get("tokens_per_s")]
    return f"{max(triton) / max(base):.2f}x" if triton and base else "—"


def render_markdown(records: list[dict]) -> str:
    """BENCHMARKS.md: latest figures per case side by side, details, and the headline history."""
    lines = ["# Benchmarks", "",
             "Generated by `python -m bench` from `bench/history.jsonl`; do not edit by hand. "
             "What is measured and how: `bench/` (timing in `bench/timing.py`, FLOP conventions in `bench/flops.py`).",
             ""]
    if not records:
        return "\n".join(lines + [NO_RECORD_TEXT, ""])
    latest = latest_figures(records)
    newest = records[-1]
    lines += ["## Latest figures", "",
              f"Newest record: {newest['date']}, `{newest['git_sha']}`, {newest['device']}, torch {newest['torch']}, "
              f"triton {newest['triton']}, CUDA {newest['cuda']}, measured bf16 peak "
              f"{_fmt(newest.get('bf16_peak_tflops'))} TFLOP/s"
              + ("" if newest.get("complete", True) else " (incomplete run: some cases failed)") + ".",
              "Each case shows its newest record; tokens/s, higher is better.", ""]
    cases: dict[str, dict[str, dict]] = {}
    for (case, variant), (figures, _) in latest.items():
        cases.setdefault(case, {})[variant] = figures
    variants = _ordered_variants({v for row in cases.values() for v in row})
    lines += ["| case | shape | " + " | ".join(variants) + " | triton vs best baseline |",
              "|---|---|" + "---|" * len(variants) + "---|"]
    for case, row in cases.items():
        shape = next(iter(row.values())).get("shape", "")
        cells = [_fmt(row[v].get("tokens_per_s"), "tokens") if v in row else "—" for v in variants]
        lines.append(f"| {case} | {shape} | " + " | ".join(cells) + f" | {_speedup(row)} |")
    lines += ["", "### Details", "",
              "| case | variant | ms | tokens/s | TFLOP/s | GB/s | peak MiB | MFU | sha |",
              "|---|---|---|---|---|---|---|---|---|"]
    for case, row in cases.items():
        for variant in _ordered_variants(row):
            f, record = latest[(case, variant)]
            lines.append(f"| {case} | {variant} | {_fmt(f.get('ms'))} | {_fmt(f.get('tokens_per_s'), 'tokens')} | "
                         f"{_fmt(f.get('tflops'))} | {_fmt(f.get('gbps'))} | {_fmt(f.get('peak_mib'))} | "
                         f"{_fmt(f.get('mfu'), 'percent')} | `{_short_sha(record['git_sha'])}` |")
    lines += _gpu_check_lines(newest)
    variants = _ordered_variants({f["variant"] for r in records for f in r["cases"]
                                  if f["case"].startswith(HEADLINE_PREFIXES)})
    lines += ["", "## History (headline cases, tokens/s)", "",
              "| date | sha | device | case | " + " | ".join(variants) + " |",
              "|---|---|---|---|" + "---|" * len(variants)]
    for record in records:
        by_case: dict[str, dict[str, dict]] = {}
        for f in record["cases"]:
            if f["case"].startswith(HEADLINE_PREFIXES):
                by_case.setdefault(f["case"], {})[f["variant"]] = f
        for case, row in by_case.items():
            cells = [_fmt(row[v].get("tokens_per_s"), "tokens") if v in row else "—" for v in variants]
            lines.append(f"| {record['date'][:10]} | `{_short_sha(record['git_sha'])}` | {record['device']} | {case} | "
                         + " | ".join(cells) + " |")
    lines += ["", "![tokens/s of the headline cases across commits](bench/history.png)", ""]
    return "\n".join(lines)


def _gpu_check_lines(record: dict) -> list[str]:
    """The newest record's `python -m bench.gpu_check` stages (tests run, time guards) and TTT projection."""
    check = record.get("gpu_check")
    if not check:
        return []
    env = check.get("environment", {})
    lines = ["", "## GPU check of the newest record", "",
             f"`python -m bench.gpu_check`: {env.get('device')}, driver {env.get('driver')}, Python {env.get('python')}, "
             f"{check.get('seconds', 0):.0f} s of a {check.get('budget_s', 0):.0f} s budget.", "",
             "| stage | status | s | tests | failed | errors | skipped | cases measured |", "|---|---|---|---|---|---|---|---|"]
    for stage in check.get("stages", []):
        t = stage.get("tests") or {}
        lines.append(f"| {stage['name']} | {stage['status']} | {stage.get('seconds', 0):.0f} | {t.get('tests', '—')} | "
                     f"{t.get('failures', '—')} | {t.get('errors', '—')} | {t.get('skipped', '—')} | "
                     f"{stage.get('measured', '—')} |")
    projection = check.get("projections", {}).get("ttt_full_validation")
    if projection:
        lines += ["", f"Projected full-validation score-first TTT on this GPU ({projection['epochs']} epochs, "
                  f"{projection['windows']:,} windows): {projection['total_s']:.0f} s = scoring "
                  f"{projection['score_s']:.0f} s ({projection['score_variant']}) + training {projection['train_s']:.0f} s "
                  f"({projection['train_variant']})"
                  + (f"; {projection['scored_targets_per_s']:,.0f} scored targets/s; ideal 8-GPU total "
                     f"{projection['total_s_8gpu_ideal']:.0f} s (perfect scaling, all-reduce not counted)"
                     if "total_s_8gpu_ideal" in projection else "") + "."]
    return lines


def plot_history(records: list[dict], path: Path = PLOT_PATH) -> str | None:
    """Write tokens/s of the headline cases across records to `path`; returns a note when it cannot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: bench/history.png not regenerated"
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for index, record in enumerate(records):
        for f in record["cases"]:
            if f["case"].startswith(HEADLINE_PREFIXES) and f.get("tokens_per_s"):
                series.setdefault(f["case"], {}).setdefault(f["variant"], []).append((index, f["tokens_per_s"]))
    if not series:
        return "no headline case (train_step, ttt_*) in the history: bench/history.png not written"
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 3 * len(series)), squeeze=False)
    labels = [r["git_sha"][:7] for r in records]
    for ax, (case, variants) in zip(axes[:, 0], series.items()):
        for variant in _ordered_variants(variants):
            xs, ys = zip(*variants[variant])
            ax.plot(xs, ys, marker="o", label=variant)
        ax.set_title(case)
        ax.set_ylabel("tokens/s")
        ax.set_xticks(range(len(records)), labels, rotation=45, fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=Path(path).parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=100)
    plt.close(fig)
    os.replace(tmp.name, path)
    return None


def regenerate(history_path: Path = HISTORY_PATH, markdown_path: Path = MARKDOWN_PATH,
               plot_path: Path = PLOT_PATH) -> list[str]:
    """Rewrite BENCHMARKS.md (and the plot when there are records) from the history; returns notes."""
    records = load_history(history_path)
    atomic_write(markdown_path, [render_markdown(records).encode()])
    if not records:
        return []
    note = plot_history(records, plot_path)
    return [note] if note else []

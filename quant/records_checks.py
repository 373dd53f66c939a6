"""What a records folder's runs must share, and the challenge's limits checked on what they measured.

- One code and one configuration: the runs are the same script (sha256) and the same settings but for the
  seed, else the statistics would mix different submissions (refused, naming the differences).
- Compliance with the 10-minute track, one check per rule, each True, False or None (not measured):
  training and evaluation at most 600 s each, code + artifact at most 16,000,000 bytes, TTT score-first,
  logs produced by train_gpt.py itself, 8xH100 recorded by the runs, at least three seeds, and the
  significance test against the current record.
- Hardware is what the runs recorded; a `--hardware` note that does not match it is a warning, never a
  replacement.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from quant.run_figures import RunFigures, SubmitError
from quant.seed_stats import RECORD_MARGIN_NATS, RECORD_P_VALUE, SeedStats

LIMIT_S = 600.0
RECORD_HARDWARE = ("H100", 8)  # the 10-minute track's machine: 8 H100s
MIN_SEEDS = 3
RUN_SPECIFIC = {("train", "seed")}  # the one setting the seeds of a submission differ in


def _plain(obj):
    """JSON-shaped (tuples as lists), so a checkpoint's config compares equal to run_info.json's."""
    return json.loads(json.dumps(obj))


def config_differences(runs: list[RunFigures]) -> list[str]:
    """Every setting in which a run differs from the first, the seed aside."""
    base, diffs = _plain(runs[0].settings()), []
    for run in runs[1:]:
        other = _plain(run.settings())
        for section in ("train", "model", "eval"):
            for key in sorted(set(base[section]) | set(other[section])):
                a, b = base[section].get(key), other[section].get(key)
                if (section, key) not in RUN_SPECIFIC and a != b:
                    diffs.append(f"{section}.{key} {a!r} (seed {runs[0].seed}) vs {b!r} (seed {run.seed})")
    return diffs


def check_runs(runs: list[RunFigures]) -> None:
    """Refuse runs that are not seeds of one submission (SubmitError naming why)."""
    seeds = [run.seed for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SubmitError(f"two runs share a seed ({', '.join(map(str, seeds))}); give each seed once")
    kinds = {run.by_script for run in runs}
    if len(kinds) > 1:
        raise SubmitError("the runs mix train_gpt.py runs and package runs: one submission is one code")
    if runs[0].by_script:
        shas = {run.code["sha256"] for run in runs}
        if len(shas) > 1:
            raise SubmitError("the runs ran different train_gpt.py files (sha256 "
                              f"{', '.join(sorted(sha[:12] for sha in shas))}): one submission is one code")
    diffs = config_differences(runs)
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise SubmitError(f"the runs differ beyond the seed: {'; '.join(diffs[:3])}{more}")


@dataclass
class Check:
    key: str            # submission.json's compliance key
    rule: str           # README wording
    ok: bool | None     # None: not measured, or not applicable
    detail: str


def _all(values: list[bool | None]) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def _max(values) -> float | None:
    return None if any(v is None for v in values) else max(values)


def hardware_is_record_machine(run: RunFigures) -> bool | None:
    if run.hardware is None:
        return None
    name, count = RECORD_HARDWARE
    return run.recorded("world_size") == count and name.lower() in run.hardware.lower()


def compliance(runs: list[RunFigures], code_bytes: int, cap: int, stats: SeedStats) -> list[Check]:
    """The 10-minute track's rules checked on the runs' own figures."""
    train = [run.train_time_s for run in runs]
    caps = sorted({run.settings()["train"].get("max_wallclock_seconds", 0.0) for run in runs})
    evals = [run.eval_timing() for run in runs]
    totals = [code_bytes + run.artifact_bytes for run in runs]
    ttt_runs = [run for run in runs if run.eval and "post_ttt_val_bpb" in run.eval]
    idle = [run.seed for run in ttt_runs if (run.ttt_chunks or 0) < 2]
    machines = [hardware_is_record_machine(run) for run in runs]
    longest_train, longest_eval = _max(train), _max([s for s, _ in evals])
    checks = [
        Check("train_under_600s", "training at most 600 s", None if longest_train is None
              else longest_train <= LIMIT_S,
              "not measured" if longest_train is None else
              f"longest {longest_train:.1f} s (validation excluded); MAX_WALLCLOCK_SECONDS "
              f"{', '.join(f'{c:g}' for c in caps)}"),
        Check("eval_under_600s", "evaluation at most 600 s", None if longest_eval is None
              else longest_eval <= LIMIT_S,
              "not measured" if longest_eval is None else f"longest {longest_eval:.1f} s ({evals[0][1]})"),
        Check("artifact_under_16mb", f"code + artifact at most {cap:,} bytes", all(t <= cap for t in totals),
              f"largest {max(totals):,} bytes ({code_bytes:,} code + {max(totals) - code_bytes:,} artifact)"),
        Check("score_first_ttt", "TTT scores every chunk before training on it",
              True if ttt_runs else None,
              "no TTT" if not ttt_runs else "eval.ttt: each chunk is scored, then trained on" + (
                  f"; seeds {', '.join(map(str, idle))}: one chunk, so no adaptation ran" if idle else "")),
        Check("logs_from_train_gpt", "train logs written by train_gpt.py as it ran", all(r.by_script for r in runs),
              "the logs train_gpt.py wrote, copied untouched" if runs[0].by_script else
              "package runs: logs rendered afterwards from metrics.jsonl"),
        Check("hardware_8xh100", "8xH100, as recorded by the runs", _all(machines),
              "; ".join(sorted({run.hardware or "not recorded" for run in runs}))),
        Check("three_seeds", f"at least {MIN_SEEDS} seeds", len(runs) >= MIN_SEEDS, f"{len(runs)} seed(s)"),
        Check("significant_improvement",
              f"at least {RECORD_MARGIN_NATS} nats better than the record at p < {RECORD_P_VALUE}",
              None if stats.p_value is None else stats.significant,
              "no baseline given (--baseline-val-loss)" if stats.baseline_val_loss is None else
              "needs two or more seeds" if stats.p_value is None else
              f"p = {stats.p_value:.3g} (t = {stats.t:.3g}, df {stats.df})"),
    ]
    return checks


def record_eligible(checks: list[Check]) -> bool:
    """Every rule of the 10-minute track holds (None, unmeasured, is not a pass)."""
    return all(check.ok is True or (check.key == "score_first_ttt" and check.ok is None) for check in checks)


_COUNT = re.compile(r"\s*(\d+)\s*[x\u00d7]\s*", re.IGNORECASE)
_MODEL = re.compile(r"[A-Za-z]+\d+[A-Za-z0-9]*")


def note_matches(note: str, recorded: str) -> bool | None:
    """Whether a `--hardware` note agrees with a recorded hardware string ("8x NVIDIA H100 80GB HBM3"): the
    same device count, and every model name with digits (H100, A100, 4090) present. None: nothing to compare."""
    claimed, actual = _COUNT.match(note), _COUNT.match(recorded)
    rest = note[claimed.end():] if claimed else note
    models = _MODEL.findall(rest)
    if claimed is None and not models:
        return None
    if claimed and actual and claimed.group(1) != actual.group(1):
        return False
    return all(model.lower() in recorded.lower() for model in models)


def hardware_warnings(runs: list[RunFigures], note: str | None) -> list[str]:
    """Warnings for the README: hardware not recorded, differing between runs, or unlike the `--hardware` note."""
    recorded = sorted({run.hardware for run in runs if run.hardware})
    warnings = []
    if any(run.hardware is None for run in runs):
        warnings.append("the runs did not record their hardware (package runs); only train_gpt.py runs do")
    if len(recorded) > 1:
        warnings.append(f"the runs were made on different hardware: {'; '.join(recorded)}")
    if note:
        for hardware in recorded:
            match = note_matches(note, hardware)
            if match is False:
                warnings.append(f"--hardware says {note!r}, but the runs recorded {hardware!r}")
            elif match is None:
                warnings.append(f"--hardware {note!r} names no device count or model to check against "
                                f"{hardware!r}")
        if not recorded:
            warnings.append(f"--hardware {note!r} cannot be checked: no run recorded its hardware")
    return warnings

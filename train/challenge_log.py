"""The Parameter Golf challenge's log lines, written live by the bundled train_gpt.py and rendered from metrics.jsonl.

The challenge's own train_gpt.py prints (and appends to logs/<RUN_ID>.txt) lines such as

    step:200/7000 train_loss:2.5808 train_time:100029ms step_avg:500.15ms
    step:500/7000 val_loss:2.3821 val_bpb:1.4108 train_time:250213ms step_avg:500.43ms
    final_int6_zstd-22_roundtrip_exact val_loss:1.91375100 val_bpb:1.13343416

Reviewers and scripts read records' logs in that shape, so the bundle writes them as training runs
(ChallengeMetricsLogger echoes every metrics record) and `python -m quant submit` renders the same lines from a
package run's metrics.jsonl (render_metrics).
"""
from __future__ import annotations

import sys
from pathlib import Path

from train.logging_utils import MetricsLogger


def train_line(step: int, total: int, train_loss: float, train_time_ms: float) -> str:
    return (f"step:{step}/{total} train_loss:{train_loss:.4f} train_time:{train_time_ms:.0f}ms "
            f"step_avg:{train_time_ms / max(step, 1):.2f}ms")


def val_line(step: int, total: int, val_loss: float, val_bpb: float, train_time_ms: float) -> str:
    return (f"step:{step}/{total} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} train_time:{train_time_ms:.0f}ms "
            f"step_avg:{train_time_ms / max(step, 1):.2f}ms")


def score_lines(tag: str, val_loss: float, val_bpb: float, seconds: float | None = None) -> list[str]:
    """The rounded line and the `_exact` line the challenge prints for a final score."""
    timing = f" eval_time:{seconds * 1000:.0f}ms" if seconds is not None else ""
    return [f"{tag} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f}{timing}",
            f"{tag}_exact val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f}"]


def record_lines(record: dict, total_steps: int) -> list[str]:
    """The challenge lines for one metrics.jsonl record (train.loop's fields); [] for records it has no line for."""
    step = int(record.get("step", 0))
    time_ms = float(record.get("train_time_ms", 0.0))
    if record.get("event") == "late_qat_enabled":
        return [f"late_qat:enabled step:{step} scale:{record['lr_mult']:.4f}"]
    if "ema_val_loss" in record:
        return [f"ema:applied step:{step} val_loss:{record['ema_val_loss']:.4f} val_bpb:{record['ema_val_bpb']:.4f}"]
    lines = []
    if isinstance(record.get("train_loss"), (int, float)):
        lines.append(train_line(step, total_steps, record["train_loss"], time_ms))
    if isinstance(record.get("val_loss"), (int, float)):
        lines.append(val_line(step, total_steps, record["val_loss"], record["val_bpb"], time_ms))
    return lines


def render_metrics(records: list[dict], total_steps: int) -> list[str]:
    """Challenge log lines for a whole run's metrics.jsonl records, in order."""
    return [line for record in records for line in record_lines(record, total_steps)]


class ChallengeLog:
    """Prints lines to stdout and appends them to a log file (rank 0 only; other ranks get a silent log)."""

    def __init__(self, path: str | Path | None, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(path) if path and enabled else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def __call__(self, *lines: str) -> None:
        if not self.enabled:
            return
        for line in lines:
            print(line, file=sys.stdout, flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)


class ChallengeMetricsLogger(MetricsLogger):
    """The training loop's metrics logger, also echoing each record as the challenge's log lines."""

    def __init__(self, path, enabled: bool = True, append: bool = False, *, log: ChallengeLog, total_steps: int):
        super().__init__(path, enabled=enabled, append=append)
        self.challenge_log, self.total_steps = log, total_steps

    def log(self, **fields) -> None:
        super().log(**fields)
        if self.enabled:
            self.challenge_log(*record_lines(fields, self.total_steps))

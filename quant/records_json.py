"""submission.json of a records folder: the keys recent records use (val_bpb as the seeds' mean, val_bpb_std,
seeds, seed_results, pytorch_version, compliance, ...), every figure taken from the runs' own records.

A figure that was not measured is null, never a guess; non-finite numbers are null too (JSON has no NaN).
"""
from __future__ import annotations

import math

from quant.records_checks import Check
from quant.run_figures import RunFigures
from quant.seed_stats import SeedStats


def seed_result(run: RunFigures, code_bytes: int) -> dict:
    """One seed's figures: the score and the stages before it, sizes, steps and times."""
    _, val_loss, val_bpb = run.score()
    ema, q, e = run.last("ema_val_bpb"), run.quant or {}, run.eval or {}
    eval_s, _ = run.eval_timing()
    return {"val_loss": val_loss, "val_bpb": val_bpb,
            "pre_ttt_val_loss": e.get("pre_ttt_val_loss") if "post_ttt_val_bpb" in e else None,
            "pre_ttt_val_bpb": e.get("pre_ttt_val_bpb") if "post_ttt_val_bpb" in e else None,
            "ttt_chunks": run.ttt_chunks,
            "pre_quant_val_loss": ema["ema_val_loss"] if ema else None,
            "pre_quant_val_bpb": ema["ema_val_bpb"] if ema else None,
            "roundtrip_val_loss": q.get("quant_val_loss"), "roundtrip_val_bpb": q.get("quant_val_bpb"),
            "steps": run.steps, "train_time_seconds": run.train_time_s, "eval_time_seconds": eval_s,
            "artifact_bytes": run.artifact_bytes, "bytes_total": code_bytes + run.artifact_bytes,
            "hardware": run.hardware, "world_size": run.recorded("world_size")}


def _one(values: set):
    """The runs' common value, or all of them joined when they differ; None when none was recorded."""
    values = {v for v in values if v is not None}
    return None if not values else values.pop() if len(values) == 1 else "; ".join(sorted(map(str, values)))


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def submission_json(runs: list[RunFigures], meta: dict, code: dict, stats: SeedStats,
                    checks: list[Check]) -> dict:
    """The whole submission.json. `code`: {"bytes", "sha256", "by_script"} of the counted train_gpt.py."""
    results = {str(run.seed): seed_result(run, code["bytes"]) for run in runs}
    what = runs[0].score()[0]
    train_times = [r["train_time_seconds"] for r in results.values()]
    eval_times = [r["eval_time_seconds"] for r in results.values()]
    out = {"author": meta["author"], "github_id": meta["github_id"], "name": meta["name"], "blurb": meta["blurb"],
           "date": meta["date"], "track": meta["track"],
           "val_loss": stats.val_loss_mean, "val_bpb": stats.val_bpb_mean,
           "val_loss_std": stats.val_loss_std, "val_bpb_std": stats.val_bpb_std,
           "seeds": [run.seed for run in runs], "seed_results": results, "score": what,
           "bytes_total": max(r["bytes_total"] for r in results.values()), "bytes_code": code["bytes"],
           "bytes_model": max(r["artifact_bytes"] for r in results.values()), "code_sha256": code["sha256"],
           "wallclock_seconds": None if None in train_times else max(train_times),
           "eval_time_seconds": None if None in eval_times else max(eval_times),
           "hardware": _one({run.hardware for run in runs}) or "not recorded",
           "hardware_note": meta.get("hardware_note"),
           "world_size": _one({run.recorded("world_size") for run in runs}),
           "pytorch_version": _one({run.recorded("torch") for run in runs}),
           "triton_version": _one({run.recorded("triton") for run in runs}),
           "cuda_version": _one({run.recorded("cuda") for run in runs}),
           "python_version": _one({run.recorded("python") for run in runs}),
           "significance": {k: v for k, v in stats.to_dict().items()
                            if k in ("baseline_val_loss", "margin_nats", "t", "df", "p_value", "significant")},
           "compliance": {check.key: check.ok for check in checks}}
    return _clean(out)

"""The challenge-format train log of a package run (`python -m train`), rendered from its metrics.jsonl.

A train_gpt.py run writes its own log as it runs, and a records folder ships that one untouched. A package run
keeps only metrics.jsonl and its quant/eval JSON, so its log can only be rendered afterwards: the first line
says so, and a records folder made from such runs is marked as not within the 10-minute track (the rules ask
for a log produced by the script).
"""
from __future__ import annotations

import math

from quant.run_figures import RunFigures
from train.challenge_log import render_metrics, score_lines

RENDERED_MARK = ("# rendered by `python -m quant submit` from a package run's metrics.jsonl, quant and eval files; "
                 "not a log written by train_gpt.py")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def render_train_log(run: RunFigures, code_bytes: int) -> str:
    """The challenge's log lines for a package run; `code_bytes` is the folder's train_gpt.py."""
    t, m = run.train_config, run.model_config
    steps = t["steps"]
    lines = [RENDERED_MARK, f"model_params:{run.params}",
             f"train_batch_tokens:{t['batch_tokens']} train_seq_len:{m['seq_len']} iterations:{steps} "
             f"warmdown_iters:{t['warmdown_steps']} max_wallclock_seconds:{t['max_wallclock_seconds']:.3f}",
             f"seed:{t['seed']}"]
    lines += render_metrics(run.records, steps)
    lines += [f"Serialized model int6+zstd-22: {run.artifact_bytes} bytes", f"Code size: {code_bytes} bytes",
              f"Total submission size int6+zstd-22: {run.artifact_bytes + code_bytes} bytes"]
    q = run.quant or {}
    if _finite(q.get("quant_val_bpb")) and _finite(q.get("quant_val_loss")):
        lines += score_lines("final_int6_zstd-22_roundtrip", q["quant_val_loss"], q["quant_val_bpb"])
    e = run.eval
    if e is not None:
        if "post_ttt_val_bpb" in e:
            if _finite(e.get("pre_ttt_val_loss")):
                lines += score_lines("final_int6_sliding_window", e["pre_ttt_val_loss"], e["pre_ttt_val_bpb"],
                                     e.get("sliding_seconds"))
            elif _finite(e.get("pre_ttt_val_bpb")):
                lines += [f"final_int6_sliding_window_exact val_bpb:{e['pre_ttt_val_bpb']:.8f}"]
            lines += score_lines("legal_ttt", e["val_loss"], e["val_bpb"], run.eval_timing()[0])
        else:
            lines += score_lines("final_int6_sliding_window", e["val_loss"], e["val_bpb"], e.get("sliding_seconds"))
    return "\n".join(lines) + "\n"

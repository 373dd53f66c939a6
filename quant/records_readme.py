"""The text files of a records folder: README.md, submission.json and the challenge-format train log.

Every figure comes from a RunFigures (what the run's commands measured); one that was not measured is said to
be so, never filled in.
"""
from __future__ import annotations

import datetime as dt
import math

from quant.run_figures import RunFigures
from quant.size import CAP_BYTES
from train.challenge_log import render_metrics, score_lines

# env vars of the bundle shown in the README: (variable, train/model/eval section, field)
README_VARS = (("SEED", "train", "seed"), ("ITERATIONS", "train", "steps"),
               ("WARMDOWN_ITERS", "train", "warmdown_steps"), ("TRAIN_BATCH_TOKENS", "train", "batch_tokens"),
               ("TRAIN_SEQ_LEN", "model", "seq_len"),
               ("MAX_WALLCLOCK_SECONDS", "train", "max_wallclock_seconds"), ("VAL_LOSS_EVERY", "train", "val_every"),
               ("MATRIX_LR", "train", "matrix_lr"), ("SCALAR_LR", "train", "scalar_lr"),
               ("TIED_EMBED_LR", "train", "tok_lr"), ("EMA_DECAY", "train", "ema_decay"),
               ("QAT_THRESHOLD", "train", "late_qat_threshold"), ("NUM_LAYERS", "model", "num_layers"),
               ("MODEL_DIM", "model", "model_dim"), ("NUM_HEADS", "model", "num_heads"),
               ("NUM_KV_HEADS", "model", "num_kv_heads"), ("MLP_HIDDEN", "model", "mlp_hidden"),
               ("VOCAB_SIZE", "model", "vocab_size"), ("BACKEND", "model", "backend"),
               ("EVAL_STRIDE", "eval", "stride"), ("TTT_ENABLED", "eval", "ttt"), ("TTT_EPOCHS", "eval", "ttt_epochs"),
               ("TTT_LR", "eval", "ttt_lr"), ("TTT_CHUNK_TOKENS", "eval", "ttt_chunk"),
               ("TTT_FREEZE_BLOCKS", "eval", "ttt_freeze"))


def _f(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "not measured"


def result_rows(run: RunFigures) -> list[tuple[str, object, object]]:
    """(stage, val_loss, val_bpb) from float training weights to the final score."""
    rows = []
    live, ema = run.last("val_loss"), run.last("ema_val_loss")
    if live:
        rows.append((f"live weights at step {live['step']} (non-sliding, pre-quant)", live["val_loss"],
                     live["val_bpb"]))
    if ema:
        rows.append(("EMA weights, `final_model.pt` (non-sliding, pre-quant)", ema["ema_val_loss"], ema["ema_val_bpb"]))
    q = run.quant or {}
    rows.append((f"int6/int8 artifact round trip (non-sliding, {run.artifact_bytes:,} B)",
                 q.get("quant_val_loss"), q.get("quant_val_bpb")))
    if run.eval is not None:
        e, ttt = run.eval, "post_ttt_val_bpb" in run.eval
        rows.append((f"artifact, sliding window stride {e.get('stride')}", None if ttt else e.get("val_loss"),
                     e.get("pre_ttt_val_bpb")))
        if ttt:
            rows.append(("artifact, sliding window + legal score-first TTT", e.get("val_loss"), e.get("val_bpb")))
    return rows


def eval_seconds(run: RunFigures) -> float | None:
    if run.eval is None:
        return None
    ttt = run.eval.get("ttt") or {}
    return (run.eval.get("sliding_seconds") or 0.0) + ttt.get("score_seconds", 0.0) + ttt.get("train_seconds", 0.0)


def submission_json(run: RunFigures, meta: dict, code_bytes: int) -> dict:
    """The challenge's submission.json keys (as in the records on main), plus the byte split."""
    what, val_loss, val_bpb = run.score()
    out = {"author": meta["author"], "github_id": meta["github_id"], "name": meta["name"], "blurb": meta["blurb"],
           "date": meta["date"], "track": meta["track"], "val_loss": val_loss, "val_bpb": val_bpb,
           "score": what}
    if run.eval is not None and "post_ttt_val_bpb" in run.eval:
        out["pre_ttt_val_bpb"] = run.eval.get("pre_ttt_val_bpb")
    ema = run.last("ema_val_bpb")
    if ema:
        out.update(pre_quant_val_loss=ema["ema_val_loss"], pre_quant_val_bpb=ema["ema_val_bpb"])
    out.update(bytes_total=code_bytes + run.artifact_bytes, bytes_code=code_bytes, bytes_model=run.artifact_bytes,
               eval_time_seconds=eval_seconds(run), hardware=meta["hardware"], wallclock_seconds=run.train_time_s,
               steps=run.steps, seed=run.train_config.get("seed"))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def bundle_env(defaults: dict) -> list[tuple[str, object]]:
    return [(var, defaults[section][name]) for var, section, name in README_VARS if name in defaults[section]]


def render_readme(run: RunFigures, meta: dict, defaults: dict, code_bytes: int, files: list[str],
                  modules: int) -> str:
    what, _, val_bpb = run.score()
    t, m = run.train_config, run.model_config
    total = code_bytes + run.artifact_bytes
    steps, train_s = run.steps, run.train_time_s
    tok_s = t["batch_tokens"] * steps / train_s if train_s and math.isfinite(train_s) else float("nan")
    lines = [f"# {meta['name']}", "",
             f"**val_bpb = {_f(val_bpb)}** ({what}) | artifact + code {total:,} bytes "
             f"({CAP_BYTES - total:,} under the {CAP_BYTES:,} cap) | {meta['hardware']}", ""]
    if meta["blurb"]:
        lines += [meta["blurb"], ""]
    ttt = defaults["eval"]["ttt"]
    lines += ["## What was run", "",
              f"The triton-golf recipe (preset `{t.get('model_preset')}`): {run.params:,} parameters "
              f"({m['num_layers']} layers, width {m['model_dim']}, vocab {m['vocab_size']}), {steps:,} steps of "
              f"{t['batch_tokens']:,} tokens at sequence length {m['seq_len']}, Muon + AdamW, EMA {t['ema_decay']}, "
              f"kernel backend `{m['backend']}`, seed {t['seed']}. The EMA weights are quantized to a mixed "
              "int6/int8 artifact (zstd-22), which is re-read and scored with the sliding window"
              + (" and legal score-first test-time training." if ttt else "."), "",
              f"Hardware: {meta['hardware']}.", "",
              f"`train_gpt.py` is the package's own training, quantization and evaluation code ({modules} modules, "
              "docstrings and comments stripped) bundled into one standalone file by `python -m quant submit`; "
              "its defaults are this run's configuration. From the challenge repository's root:", "",
              "```bash",
              "DATA_PATH=./data/datasets/fineweb10B_sp1024 TOKENIZER_PATH=./data/tokenizers/fineweb_1024_bpe.model \\",
              f"  torchrun --standalone --nproc_per_node=8 {meta['folder']}/train_gpt.py",
              "```", "",
              "## Results", "", "| stage | val_loss | val_bpb |", "|---|---|---|"]
    lines += [f"| {stage} | {_f(loss)} | {_f(bpb)} |" for stage, loss, bpb in result_rows(run)]
    if run.eval is not None:
        lines += ["", f"Scored targets: {run.eval.get('targets', 0):,} (window {run.eval.get('window')}, "
                      f"stride {run.eval.get('stride')}, world size {run.eval.get('world_size', 1)})."]
    lines += ["", "## Timings", "", "| | |", "|---|---|",
              f"| training (validation excluded) | {_f(train_s, 1)} s |",
              f"| step average | {_f(train_s * 1000 / max(steps, 1), 2)} ms |",
              f"| training throughput | {_f(tok_s, 0)} tokens/s |"]
    if run.eval is not None:
        ttt_fig = run.eval.get("ttt") or {}
        lines += [f"| sliding-window eval | {_f(run.eval.get('sliding_seconds'), 1)} s |"]
        if ttt_fig:
            lines += [f"| TTT: scoring + adaptation | {_f(ttt_fig.get('score_seconds'), 1)} s + "
                      f"{_f(ttt_fig.get('train_seconds'), 1)} s |"]
    lines += ["", "## Byte budget", "", "| part | bytes |", "|---|---|",
              f"| model (`final_model.int6.ptz`) | {run.artifact_bytes:,} |",
              f"| code (`train_gpt.py`) | {code_bytes:,} |",
              f"| **total** | **{total:,}** |", f"| cap | {CAP_BYTES:,} |", f"| headroom | {CAP_BYTES - total:,} |",
              "", "## Environment variables (defaults = this run)", "", "| variable | default |", "|---|---|"]
    lines += [f"| `{var}` | {value} |" for var, value in bundle_env(defaults)]
    lines += ["", "Every other TrainConfig / ModelConfig field is settable by its upper-cased name; OUT_DIR "
                  "(default `.`) and RUN_ID choose where the log, checkpoints and artifact go.", "",
              "## Files", ""]
    lines += [f"- `{name}`" for name in files]
    lines += ["", f"Train logs: {sum(1 for f in files if f.startswith('train_') and f.endswith('.log'))} "
                  "(a record claim needs three seeds' logs).", ""]
    return "\n".join(lines)


def render_train_log(run: RunFigures, code_bytes: int) -> str:
    """The challenge's log lines for a package run, rendered from its metrics.jsonl and eval files."""
    t, m = run.train_config, run.model_config
    steps = t["steps"]
    lines = ["# rendered by `python -m quant submit` from the run's metrics.jsonl, quant and eval files",
             f"model_params:{run.params}",
             f"train_batch_tokens:{t['batch_tokens']} train_seq_len:{m['seq_len']} iterations:{steps} "
             f"warmdown_iters:{t['warmdown_steps']} max_wallclock_seconds:{t['max_wallclock_seconds']:.3f}",
             f"seed:{t['seed']}"]
    lines += render_metrics(run.records, steps)
    lines += [f"Serialized model int6+zstd-22: {run.artifact_bytes} bytes", f"Code size: {code_bytes} bytes",
              f"Total submission size int6+zstd-22: {run.artifact_bytes + code_bytes} bytes"]
    q = run.quant or {}
    if isinstance(q.get("quant_val_bpb"), float):
        lines += score_lines("final_int6_zstd-22_roundtrip", q.get("quant_val_loss", float("nan")),
                             q["quant_val_bpb"])
    e = run.eval
    if e is not None:
        if "post_ttt_val_bpb" in e:
            lines += [f"final_int6_sliding_window_exact val_bpb:{e['pre_ttt_val_bpb']:.8f}"]
            lines += score_lines("legal_ttt", e["val_loss"], e["val_bpb"], eval_seconds(run))
        else:
            lines += score_lines("final_int6_sliding_window", e["val_loss"], e["val_bpb"], e.get("sliding_seconds"))
    return "\n".join(lines) + "\n"


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT00:00:00Z")


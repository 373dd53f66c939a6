"""README.md of a records folder: what was run, each seed's results and their statistics, the challenge's rules
checked, the machine the runs recorded, timings, byte budget, the script's settings and how to read it.

Every figure comes from the runs' own records (RunFigures); one that was not measured says "not measured".
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from quant.bundle import DECODE_SCRIPT
from quant.records_checks import Check
from quant.run_figures import RunFigures
from quant.seed_stats import SeedStats
from quant.size import CAP_BYTES
from train.challenge_env import PATH_VARS

# env vars of the script shown in the README: (variable, train/model/eval section, field)
README_VARS = (("SEED", "train", "seed"), ("ITERATIONS", "train", "steps"),
               ("WARMDOWN_ITERS", "train", "warmdown_steps"), ("TRAIN_BATCH_TOKENS", "train", "batch_tokens"),
               ("GRAD_ACCUM", "train", "grad_accum"), ("TRAIN_SEQ_LEN", "model", "seq_len"),
               ("MAX_WALLCLOCK_SECONDS", "train", "max_wallclock_seconds"), ("VAL_LOSS_EVERY", "train", "val_every"),
               ("MATRIX_LR", "train", "matrix_lr"), ("SCALAR_LR", "train", "scalar_lr"),
               ("TIED_EMBED_LR", "train", "tok_lr"), ("EMA_DECAY", "train", "ema_decay"),
               ("QAT_THRESHOLD", "train", "late_qat_threshold"), ("NUM_LAYERS", "model", "num_layers"),
               ("MODEL_DIM", "model", "model_dim"), ("NUM_HEADS", "model", "num_heads"),
               ("NUM_KV_HEADS", "model", "num_kv_heads"), ("MLP_HIDDEN", "model", "mlp_hidden"),
               ("VOCAB_SIZE", "model", "vocab_size"), ("BACKEND", "model", "backend"),
               ("EVAL_STRIDE", "eval", "stride"), ("EVAL_MAX_TOKENS", "eval", "max_tokens"),
               ("TTT_ENABLED", "eval", "ttt"), ("TTT_EPOCHS", "eval", "ttt_epochs"),
               ("TTT_BUDGET_SECONDS", "eval", "ttt_budget_s"), ("TTT_LR", "eval", "ttt_lr"),
               ("TTT_CHUNK_TOKENS", "eval", "ttt_chunk"), ("TTT_FREEZE_BLOCKS", "eval", "ttt_freeze"),
               ("EVAL_SKIP_BASELINE", "eval", "skip_baseline"), ("WARMUP_STEPS", "train", "warmup_steps"),
               ("ACCUMULATE_BIGRAM_SCALE_GRAD", "train", "accumulate_bigram_scale_grad"),
               ("TOK_EMB_DTYPE", "train", "tok_emb_dtype"), ("LATE_QAT_IN_TRAINING", "train", "late_qat_in_training"),
               ("TTT_QAT", "eval", "ttt_qat"), ("EVAL_SEED_QUIRK", "eval", "seed_quirk"))
TWIN_NAME = "train_gpt_plain.py"
NOT_MEASURED = "not measured"


@dataclass
class Submission:
    """Everything a records folder's text files say, gathered once."""
    runs: list[RunFigures]
    meta: dict           # name, github_id, author, blurb, track, date, folder, hardware_note
    code: dict           # bytes, sha256, by_script, compressed, modules
    defaults: dict       # the script's embedded {"train", "model", "eval"}
    stats: SeedStats
    checks: list[Check]
    warnings: list[str]
    extra_requirements: list[str]  # distributions the challenge's requirements.txt lacks


def _f(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else NOT_MEASURED


def _secs(value, digits: int = 1) -> str:
    text = _f(value, digits)
    return text if text == NOT_MEASURED else f"{text} s"


def _mark(ok: bool | None) -> str:
    return {True: "yes", False: "**no**", None: NOT_MEASURED}[ok]


def headline(sub: Submission) -> list[str]:
    s, runs = sub.stats, sub.runs
    what = runs[0].score()[0]
    spread = f", std {_f(s.val_bpb_std)}" if s.val_bpb_std is not None else ""
    total = max(sub.code["bytes"] + run.artifact_bytes for run in runs)
    hardware = "; ".join(sorted({run.hardware or "hardware not recorded" for run in runs}))
    lines = [f"# {sub.meta['name']}", "",
             f"**val_bpb {_f(s.val_bpb_mean)}** (mean of {s.n} seed{'s' if s.n > 1 else ''}{spread}; {what}) | "
             f"code + artifact at most {total:,} bytes | {hardware}", ""]
    return lines + ([sub.meta["blurb"], ""] if sub.meta["blurb"] else [])


def track_section(sub: Submission) -> list[str]:
    failed = [c.rule for c in sub.checks if c.ok is not True and c.key != "score_first_ttt"]
    if sub.meta["track"] == "10min_16mb":
        text = "Record track (`track_10min_16mb`): every rule under Compliance holds."
    else:
        text = ("Non-record track (`track_non_record_16mb`): not within the 10-minute track, since these do not "
                f"hold: {'; '.join(failed)}." if failed else
                "Non-record track (`track_non_record_16mb`), chosen with --track although every rule holds.")
    return ["## Track", "", text, ""]


def _stage(run: RunFigures) -> dict:
    e, q, ema = run.eval or {}, run.quant or {}, run.last("ema_val_bpb")
    ttt = "post_ttt_val_bpb" in e
    return {"ema": ema["ema_val_bpb"] if ema else None, "roundtrip": q.get("quant_val_bpb"),
            "sliding": e.get("pre_ttt_val_bpb") if ttt else e.get("val_bpb"),
            "ttt": e.get("val_bpb") if ttt else None, "ttt_used": ttt}


def results_section(sub: Submission) -> list[str]:
    runs, s = sub.runs, sub.stats
    ttt = any(_stage(run)["ttt_used"] for run in runs)
    head = "| seed | steps | pre-quant (EMA) | int6 round trip | sliding window |" + (" + score-first TTT |" if ttt
                                                                                      else "")
    lines = ["## Results", "", "val_bpb at each stage (round trip: non-overlapping windows on the training "
             "val's tokens; sliding and TTT: the final evaluation of the re-read artifact), then the score's "
             "val_loss in nats:", "",
             head + " val_loss |", "|---|---|---|---|---|" + ("---|" if ttt else "") + "---|"]
    for run in runs:
        st, (_, loss, _) = _stage(run), run.score()
        sliding = _f(st["sliding"]) if st["sliding"] is not None or not st["ttt_used"] else \
            "skipped (EVAL_SKIP_BASELINE)"
        ttt_cell = ""
        if ttt:
            ttt_cell = f" {_f(st['ttt'])}" + (" (one chunk: no adaptation ran)" if (run.ttt_chunks or 0) < 2
                                              and st["ttt_used"] else "") + " |"
        lines.append(f"| {run.seed} | {run.steps:,} | {_f(st['ema'])} | {_f(st['roundtrip'])} | {sliding} |"
                     f"{ttt_cell} {_f(loss)} |")
    lines += ["", f"Over {s.n} seed{'s' if s.n > 1 else ''}: val_bpb mean {_f(s.val_bpb_mean, 6)}"
                  + (f", std {_f(s.val_bpb_std, 6)}" if s.val_bpb_std is not None else "")
                  + f"; val_loss mean {_f(s.val_loss_mean, 6)}"
                  + (f", std {_f(s.val_loss_std, 6)} (sample standard deviations)." if s.val_loss_std is not None
                     else "; one seed has no spread."), ""]
    if s.baseline_val_loss is None:
        lines += ["No record claim: no baseline was given (`--baseline-val-loss`, the current record's val_loss).",
                  ""]
    elif s.p_value is None:
        lines += ["The significance test needs two or more seeds.", ""]
    else:
        lines += [f"Record test (the challenge's rule: at least {s.margin_nats} nats better, at p < 0.01): "
                  f"baseline val_loss {s.baseline_val_loss:.6f}, mean improvement "
                  f"{s.baseline_val_loss - s.val_loss_mean:.6f} nats; one-sided t-test of mean val_loss < "
                  f"{s.baseline_val_loss - s.margin_nats:.6f}: t = {s.t:.4g}, df = {s.df}, "
                  f"**p = {s.p_value:.4g}** ({'significant' if s.significant else 'not significant'}).", ""]
    return lines


def compliance_section(sub: Submission) -> list[str]:
    lines = ["## Compliance", "", "| rule | holds | measured |", "|---|---|---|"]
    lines += [f"| {c.rule} | {_mark(c.ok) if c.key != 'score_first_ttt' or c.ok else 'no TTT'} | {c.detail} |"
              for c in sub.checks]
    return lines + [""]


def machine_section(sub: Submission) -> list[str]:
    lines = ["## Hardware and software (as each run recorded them)", "",
             "| seed | hardware | world size | torch | triton | CUDA | python |", "|---|---|---|---|---|---|---|"]
    for run in sub.runs:
        cells = [run.hardware, run.recorded("world_size"), run.recorded("torch"), run.recorded("triton"),
                 (run.recorded("cuda") or "none (CPU build of torch)") if run.by_script else None,
                 run.recorded("python")]
        lines.append(f"| {run.seed} | " + " | ".join("not recorded" if c is None else str(c) for c in cells) + " |")
    lines.append("")
    if sub.meta.get("hardware_note"):
        lines += [f"Submitter's note (`--hardware`): {sub.meta['hardware_note']}.", ""]
    lines += [f"Warning: {w}." for w in sub.warnings]
    return lines + ([""] if sub.warnings else [])


def timings_section(sub: Submission) -> list[str]:
    lines = ["## Timings", "", "| seed | training (validation excluded) | step average | tokens/s | evaluation "
             "| whole run |", "|---|---|---|---|---|---|"]
    for run in sub.runs:
        train_s, steps = run.train_time_s, max(run.steps, 1)
        tokens = run.settings()["train"]["batch_tokens"] * run.steps / train_s if train_s else None
        eval_s, what = run.eval_timing()
        total = ((run.info or {}).get("timings") or {}).get("total_s")
        step_ms = _f(train_s * 1000 / steps if train_s else None, 1)
        lines.append(f"| {run.seed} | {_secs(train_s)} | {step_ms}{' ms' if train_s else ''} | {_f(tokens, 0)} | "
                     f"{_secs(eval_s)} ({what}) | {_secs(total)} |")
    return lines + [""]


def launch_line(run: RunFigures, folder: str) -> str:
    """The command that made a run: the variables it set (paths aside) before torchrun."""
    if run.by_script:
        env = {k: v for k, v in (run.info.get("env") or {}).items() if k not in PATH_VARS}
        world = run.recorded("world_size") or 1
    else:
        env, world = {"SEED": str(run.seed)}, 8
    settings = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
    return f"{settings + ' ' if settings else ''}torchrun --standalone --nproc_per_node={world} {folder}/train_gpt.py"


def how_section(sub: Submission) -> list[str]:
    code, folder = sub.code, sub.meta["folder"]
    t = sub.defaults["train"]
    stored = "lzma + base85" if code["compressed"] else "plain text"
    lines = ["## How it was run", "",
             f"`train_gpt.py` ({code['bytes']:,} bytes, sha256 `{code['sha256'][:16]}...`: the code bytes) is "
             f"triton-golf's own training, quantization and evaluation code, {code['modules']} modules bundled "
             f"into one standalone file by `python -m quant bundle` (docstrings and comments stripped, {stored}), "
             f"preset `{t.get('model_preset')}`."]
    if code["by_script"]:
        lines += ["Each run below ran this very file (the runs' run_info.json hold its sha256), and each "
                  "`train_seed<S>.log` is the log it wrote, copied untouched."]
    else:
        lines += ["These runs were made with the package's commands (`python -m train`, `python -m quant`, "
                  "`python -m eval`), not with this file, and their logs were rendered afterwards from "
                  "metrics.jsonl; the file's defaults are the first run's configuration, so the commands below "
                  "repeat them with train_gpt.py."]
    lines += ["From the challenge repository's root, one command per seed:", "", "```bash",
              "export DATA_PATH=./data/datasets/fineweb10B_sp1024 "
              "TOKENIZER_PATH=./data/tokenizers/fineweb_1024_bpe.model"]
    lines += [launch_line(run, folder) for run in sub.runs]
    lines += ["```", ""]
    if code["compressed"]:
        lines += [f"`{TWIN_NAME}` is its readable twin: the same modules and defaults stored as plain text (it "
                  "runs the same way; it is not counted in the code bytes). To decode `train_gpt.py`'s own table "
                  "(standard library only; writes the modules under `train_gpt_modules/`):", "",
                  "```bash", "python3 - <<'EOF'", DECODE_SCRIPT.rstrip("\n"), "EOF", "```", ""]
    return lines


def budget_section(sub: Submission) -> list[str]:
    code = sub.code["bytes"]
    lines = ["## Byte budget", "", "| seed | model (`final_model.int6.ptz`) | code (`train_gpt.py`) | total | "
             "headroom |", "|---|---|---|---|---|"]
    for run in sub.runs:
        total = code + run.artifact_bytes
        lines.append(f"| {run.seed} | {run.artifact_bytes:,} | {code:,} | {total:,} | {CAP_BYTES - total:,} |")
    return lines + ["", f"Cap: {CAP_BYTES:,} bytes (decimal). The code figure is this folder's train_gpt.py, the "
                        "one each log's `Code size` line counts.", ""]


def settings_section(sub: Submission) -> list[str]:
    d = sub.defaults
    lines = ["## Environment variables (the script's defaults)", "", "| variable | default |", "|---|---|"]
    for var, section, name in README_VARS:
        if name in d.get(section, {}):
            value = d[section][name]
            if value is None and var == "GRAD_ACCUM":
                value = "fitted to the world size (accum_total / world where that divides)"
            lines.append(f"| `{var}` | {value} |")
    lines += ["", "Every other TrainConfig / ModelConfig field is settable by its upper-cased name. "
              "`DATA_PATH` and `TOKENIZER_PATH` locate the data; outputs go to `runs/<RUN_ID>` (RUN_ID defaults "
              "to `seed<SEED>`) unless `OUT_DIR` says otherwise, and a folder already holding a run's files is "
              "refused, so running the script inside this folder overwrites nothing. Training stops at "
              "`MAX_WALLCLOCK_SECONDS` (0: no cap); with `TTT_BUDGET_SECONDS` > 0 the TTT epochs are sized so the "
              "whole evaluation (artifact re-read and round trip included) fits it.", ""]
    return lines


def requirements_section(sub: Submission) -> list[str]:
    extra = sub.extra_requirements
    lines = ["## Requirements", "", "`requirements.txt` lists the packages train_gpt.py imports."]
    if extra:
        lines += [f"Not in the challenge's requirements.txt: {', '.join(f'`{d}`' for d in extra)} "
                  f"(`pip install {' '.join(d for d in extra if d != 'triton')}`"
                  + ("; triton comes with torch's CUDA wheels" if "triton" in extra else "") + ")."]
    lines += ["The challenge's requirements.txt installs Hugging Face's `kernels` package, whose top-level name is "
              "also this code's `kernels`: train_gpt.py's import hook serves its own modules before any installed "
              "package, so that one is never imported by it.", ""]
    return lines


def render_readme(sub: Submission, files: list[str]) -> str:
    lines = [*headline(sub), *track_section(sub), *results_section(sub), *compliance_section(sub),
             *machine_section(sub), *timings_section(sub), *how_section(sub), *budget_section(sub),
             *settings_section(sub), *requirements_section(sub), "## Files", ""]
    lines += [f"- `{name}`" for name in files]
    return "\n".join(lines) + "\n"


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT00:00:00Z")

"""The bundled train_gpt.py's job in one process: train -> write and re-read the artifact -> evaluate, with the
challenge's log lines.

`main(defaults, code_path)` is what `quant.bundle` makes train_gpt.py call, under
`torchrun --standalone --nproc_per_node=N train_gpt.py` (any N from 1 to 8) or plain `python train_gpt.py`. It
runs the package's own stages, unchanged, in order:
  1. train.loop.run_training (DDP under torchrun) with the configs from train.challenge_env (the script's
     defaults, overridden by the challenge's environment variables; gradient accumulation fitted to the world
     size), echoing the challenge's step lines live;
  2. the EMA weights (final_model.pt) quantized and written as `python -m quant` does -> final_model.int6.ptz,
     then the byte budget (this file's code bytes + artifact bytes vs 16,000,000);
  3. every rank re-reads the artifact: the non-overlapping round-trip val score (the training val's tokens), then
     `python -m eval`'s run (sliding window, legal score-first TTT as configured; with TTT_BUDGET_SECONDS the
     TTT epochs are sized so the whole evaluation, round trip included, fits that budget).
Outputs in OUT_DIR (default runs/<RUN_ID>; a folder already holding any of them is refused, so nothing is
overwritten, the records folder the script sits in included): logs/<RUN_ID>.txt (the challenge log),
metrics.jsonl, checkpoint.pt, final_model.pt, final_model.int6.ptz, quant.json, eval.json, ttt_chunks.jsonl,
run_info.json (machine, versions, settings, variables read, timings) and a copy of the script that ran.
Bad input is one `error:` line, from rank 0 only under torchrun (every rank meets the same input).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import time
from pathlib import Path

import torch

from kernels.autocast import autocast_for
from quant.artifact import DEFAULT_LEVEL, compress_body, encode_body, write_atomic
from quant.schemes import quantize_state_dict
from quant.size import size_summary
from common.atomic import atomic_write
from common.checkpoint import read_model_file
from common.cli_errors import CLIError, run_cli
from train.challenge_env import ChallengeSettings, fit_to_world, settings_from_env
from train.challenge_record import SCRIPT_COPY, code_identity, environment, refuse_occupied
from train.challenge_log import ChallengeLog, ChallengeMetricsLogger, score_lines
from train.distributed import setup_distributed, teardown_distributed
from train.loop import TrainingDiverged, run_training

ARTIFACT_NAME = "final_model.int6.ptz"
OTHER_RANK_GRACE_S = 5.0  # a failing rank > 0 waits this long for rank 0 to report the same error


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, [(json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")])


def log_header(log: ChallengeLog, s: ChallengeSettings, ctx, env: dict, code: dict | None,
               batch_note: str | None) -> None:
    t, m = s.train, s.model
    log(f"run_id:{s.run_id} world_size:{ctx.world_size} device:{ctx.device} hardware:{env['hardware']}",
        f"python:{env['python']} torch:{env['torch']} triton:{env['triton']} cuda:{env['cuda']}",
        f"code:{code['bytes']} bytes sha256:{code['sha256']}" if code else "code: the package (not a bundle)",
        f"data_path:{s.data_path} tokenizer_path:{s.tokenizer_path} out_dir:{s.out_dir}",
        f"train_batch_tokens:{t.batch_tokens} train_seq_len:{m.seq_len} iterations:{t.steps} "
        f"warmdown_iters:{t.warmdown_steps} max_wallclock_seconds:{t.max_wallclock_seconds:.3f} "
        f"grad_accum:{t.grad_accum}",
        *([f"note: {batch_note}"] if batch_note else []),
        f"model:{json.dumps(m.to_dict(), separators=(',', ':'))}",
        f"train:{json.dumps(t.to_dict(), separators=(',', ':'))}",
        f"eval:{json.dumps(dataclasses.asdict(s.eval), separators=(',', ':'))}",
        f"env:{json.dumps(s.env, separators=(',', ':'))}",
        f"seed:{t.seed}")


def write_artifact(s: ChallengeSettings, code_path, log: ChallengeLog) -> dict:
    """Quantize the EMA weights into the artifact and check the byte budget (rank 0)."""
    source = read_model_file(s.out_dir / "final_model.pt")
    artifact = s.out_dir / ARTIFACT_NAME
    t0 = time.perf_counter()
    qtensors = quantize_state_dict(source.state)  # as `python -m quant` does, with its defaults
    data = compress_body(encode_body(qtensors, source.config, provenance=source.provenance), DEFAULT_LEVEL)
    write_atomic(artifact, data)
    artifact_bytes = len(data)
    code_bytes = len(Path(code_path).read_bytes()) if code_path else 0
    summary = size_summary(artifact_bytes, code_bytes)
    tag = f"int6+zstd-{DEFAULT_LEVEL}"
    log(f"Serialized model {tag}: {artifact_bytes} bytes ({time.perf_counter() - t0:.1f}s)",
        f"Code size: {code_bytes} bytes" + ("" if code_path else " (not a bundle: code not counted)"),
        f"Total submission size {tag}: {summary['total_bytes']} bytes",
        f"size_check: cap {summary['cap_bytes']} headroom {summary['headroom_bytes']} "
        f"{'OK' if summary['ok'] else 'OVER THE CAP'}")
    return dict(summary, artifact=str(artifact), zstd_level=DEFAULT_LEVEL)


def roundtrip_score(s: ChallengeSettings, ctx, log: ChallengeLog) -> dict:
    """Val score of the re-read artifact on the training val's tokens (non-overlapping, as in training)."""
    from eval.loading import load_model
    from common.shards import load_validation_tokens
    from train.data.tokenizer import build_byte_luts, load_tokenizer
    from train.validation import evaluate

    model, cfg, _ = load_model(s.out_dir / ARTIFACT_NAME, device=ctx.device)
    tokens = load_validation_tokens(s.data_path, cfg.seq_len, cfg.vocab_size)
    if s.train.val_max_tokens > 0:  # the same cut as train.loop's validation
        keep = max(min(s.train.val_max_tokens, tokens.numel() - 1) // cfg.seq_len, 1) * cfg.seq_len
        tokens = tokens[:keep + 1]
    luts = build_byte_luts(load_tokenizer(s.tokenizer_path), cfg.vocab_size)
    autocast = functools.partial(autocast_for, ctx.device)
    t0 = time.perf_counter()
    val_loss, val_bpb = evaluate(model, tokens, cfg.seq_len, luts, s.train.val_batch_seqs, ctx.device, autocast,
                                 ctx.rank, ctx.world_size)
    seconds = time.perf_counter() - t0
    log(*score_lines(f"final_int6_zstd-{DEFAULT_LEVEL}_roundtrip", val_loss, val_bpb, seconds))
    return {"quant_val_loss": val_loss, "quant_val_bpb": val_bpb, "roundtrip_seconds": seconds,
            "val_tokens": tokens.numel() - 1}


def final_eval(s: ChallengeSettings, ctx, log: ChallengeLog, eval_started: float) -> dict:
    """`python -m eval`'s sliding-window (+ TTT) evaluation of the artifact, in this process group. With
    TTT_BUDGET_SECONDS, what the round trip already took comes off the budget the TTT epochs are sized to."""
    from eval.__main__ import build_parser, run

    device = f"cuda:{ctx.local_rank}" if ctx.device.type == "cuda" else "cpu"
    budget_left = s.eval.ttt_budget_s - (time.perf_counter() - eval_started)
    argv = [str(s.out_dir / ARTIFACT_NAME), "--data", str(s.data_path), "--tokenizer", str(s.tokenizer_path),
            "--device", device, "--no-progress", "--json", str(s.out_dir / "eval.json"),
            *s.eval.eval_argv(budget_left)]
    if s.eval.ttt:
        argv += ["--chunk-log", str(s.out_dir / "ttt_chunks.jsonl")]
    summary = run(build_parser().parse_args(argv))
    if not s.eval.ttt:
        log(*score_lines("final_int6_sliding_window", summary["val_loss"], summary["val_bpb"],
                         summary["sliding_seconds"]))
        return summary
    if "pre_ttt_val_bpb" in summary:
        log(*score_lines("final_int6_sliding_window", summary["pre_ttt_val_loss"], summary["pre_ttt_val_bpb"],
                         summary["sliding_seconds"]))
    else:
        log("final_int6_sliding_window: skipped (EVAL_SKIP_BASELINE=1), not measured")
    ttt = summary["ttt"]
    if ttt["chunks"] < 2:
        log(f"legal_ttt: the {summary['targets']} targets fit in one {s.eval.ttt_chunk}-token chunk: no "
            "adaptation ran, so the TTT score is the sliding score (set TTT_CHUNK_TOKENS smaller)")
    log(*score_lines("legal_ttt", summary["val_loss"], summary["val_bpb"],
                     ttt["score_seconds"] + ttt["train_seconds"]))
    return summary


def copy_script(code_path, out_dir: Path) -> None:
    """The script that runs, copied beside its outputs (quant submit ships this very file)."""
    data = Path(code_path).read_bytes()
    atomic_write(out_dir / SCRIPT_COPY, [data])


def run(s: ChallengeSettings, code_path=None) -> dict:
    """Train, write + re-read the artifact, evaluate; returns the figures (printed last as one JSON line)."""
    started_at, t_start = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    refuse_occupied(s.out_dir, s.run_id)
    ctx = setup_distributed()  # joined once here, so training and eval share the process group
    try:
        train_cfg, batch_note = fit_to_world(s.train, s.model.seq_len, ctx.world_size)
        s = dataclasses.replace(s, train=train_cfg)
        env, code = environment(ctx), code_identity(code_path)
        s.out_dir.mkdir(parents=True, exist_ok=True)
        log = ChallengeLog(s.out_dir / "logs" / f"{s.run_id}.txt", enabled=ctx.is_main)
        log_header(log, s, ctx, env, code, batch_note)
        if ctx.is_main and code_path:
            copy_script(code_path, s.out_dir)
        logger = functools.partial(ChallengeMetricsLogger, log=log, total_steps=s.train.steps)
        trained = run_training(s.train, s.model, s.data_path, s.out_dir, tokenizer_path=s.tokenizer_path,
                               progress=False, logger_factory=logger)
        t_serialize = time.perf_counter()
        quant = write_artifact(s, code_path, log) if ctx.is_main else {}
        if ctx.world_size > 1:
            torch.distributed.barrier()
        eval_started = time.perf_counter()
        quant.update(roundtrip_score(s, ctx, log))
        evaluated = final_eval(s, ctx, log, eval_started)
        finished = time.perf_counter()
        timings = {"train_s": trained["train_time_s"], "max_wallclock_seconds": s.train.max_wallclock_seconds,
                   "serialize_s": eval_started - t_serialize, "roundtrip_s": quant["roundtrip_seconds"],
                   "final_eval_s": finished - eval_started - quant["roundtrip_seconds"],
                   "eval_s": finished - eval_started, "ttt_budget_s": s.eval.ttt_budget_s,
                   "total_s": finished - t_start}
        log(f"timing: train {timings['train_s']:.1f}s (validation excluded) | serialize "
            f"{timings['serialize_s']:.1f}s | eval {timings['eval_s']:.1f}s (round trip "
            f"{timings['roundtrip_s']:.1f}s + final {timings['final_eval_s']:.1f}s) | total {timings['total_s']:.1f}s")
        figures = {"event": "challenge_run", "run_id": s.run_id, "train": trained, "quant": quant,
                   "eval": evaluated, "timings": timings}
        if ctx.is_main:
            write_json(s.out_dir / "quant.json", quant)
            write_json(s.out_dir / "run_info.json", {
                **env, "run_id": s.run_id, "code": code, "env": s.env, "batch_note": batch_note,
                "settings": {"train": s.train.to_dict(), "model": s.model.to_dict(),
                             "eval": dataclasses.asdict(s.eval)},
                "timings": timings, "started_at": started_at.isoformat(timespec="seconds"),
                "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
            print(json.dumps(figures, default=str), flush=True)
        return figures
    finally:
        teardown_distributed(ctx)


def main(defaults: dict, code_path=None, environ=None) -> dict:
    """Entry point of the bundled train_gpt.py: settings from the environment over `defaults`, then run.

    Bad input is one `error:` line and a non-zero exit (common.cli_errors), as in the package's CLIs. Under
    torchrun every rank meets the same input, so rank 0 says it and the other ranks wait OTHER_RANK_GRACE_S
    first: torchrun stops them once rank 0 has failed, and a rank whose error was its own alone says it then,
    as `error: rank N: ...`. An unexpected exception is reported by the rank it hit."""
    rank = int(os.environ.get("RANK", "0"))

    def job() -> dict:
        try:
            return run(settings_from_env(defaults, environ), code_path)
        except TrainingDiverged as exc:
            raise CLIError(str(exc)) from exc
        except (CLIError, ValueError, OSError) as exc:
            if rank == 0:
                raise
            time.sleep(OTHER_RANK_GRACE_S)
            raise CLIError(f"rank {rank}: {exc}") from exc

    result = run_cli(job)
    if isinstance(result, int):  # run_cli's exit status, after the error line
        raise SystemExit(result)
    return result

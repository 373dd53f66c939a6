"""The bundled train_gpt.py's job in one process: train -> write and re-read the artifact -> evaluate, with the
challenge's log lines.

`main(defaults, code_path)` is what `quant.bundle` makes train_gpt.py call, under
`torchrun --standalone --nproc_per_node=8 train_gpt.py` (or plain `python train_gpt.py`). It runs the package's
own stages, unchanged, in order:
  1. train.loop.run_training (DDP under torchrun) with the configs from train.challenge_env (the run's configs,
     overridden by the challenge's environment variables), echoing the challenge's step lines live;
  2. the EMA weights (final_model.pt) quantized and written as `python -m quant` does -> final_model.int6.ptz,
     then the byte budget (this file's code bytes + artifact bytes vs 16,000,000);
  3. every rank re-reads the artifact: the non-overlapping round-trip val score (the training val's tokens), then
     `python -m eval`'s run (sliding window, legal score-first TTT as configured).
Outputs in OUT_DIR (default: the working directory): logs/<RUN_ID>.txt (the challenge log), metrics.jsonl,
checkpoint.pt, final_model.pt, final_model.int6.ptz, quant.json, eval.json, ttt_chunks.jsonl, run_info.json.
"""
from __future__ import annotations

import functools
import json
import platform
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
from train.challenge_env import ChallengeSettings, settings_from_env
from train.challenge_log import ChallengeLog, ChallengeMetricsLogger, score_lines
from train.distributed import setup_distributed, teardown_distributed
from train.loop import TrainingDiverged, run_training

ARTIFACT_NAME = "final_model.int6.ptz"


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, [(json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")])


def hardware(ctx) -> str:
    if ctx.device.type == "cuda":
        return f"{ctx.world_size}x {torch.cuda.get_device_name(ctx.device)}"
    return f"{ctx.world_size}x CPU ({platform.processor() or platform.machine()})"


def log_header(log: ChallengeLog, s: ChallengeSettings, ctx) -> None:
    t, m = s.train, s.model
    log(f"run_id:{s.run_id} world_size:{ctx.world_size} device:{ctx.device} hardware:{hardware(ctx)}",
        f"python:{platform.python_version()} torch:{torch.__version__}",
        f"data_path:{s.data_path} tokenizer_path:{s.tokenizer_path}",
        f"train_batch_tokens:{t.batch_tokens} train_seq_len:{m.seq_len} iterations:{t.steps} "
        f"warmdown_iters:{t.warmdown_steps} max_wallclock_seconds:{t.max_wallclock_seconds:.3f}",
        f"model:{json.dumps(m.to_dict(), separators=(',', ':'))}",
        f"train:{json.dumps(t.to_dict(), separators=(',', ':'))}",
        f"eval:stride:{s.eval.stride} ttt:{s.eval.ttt} ttt_chunk:{s.eval.ttt_chunk} ttt_epochs:{s.eval.ttt_epochs} "
        f"ttt_lr:{s.eval.ttt_lr} ttt_freeze:{s.eval.ttt_freeze}",
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


def final_eval(s: ChallengeSettings, ctx, log: ChallengeLog) -> dict:
    """`python -m eval`'s sliding-window (+ TTT) evaluation of the artifact, in this process group."""
    from eval.__main__ import build_parser, run

    device = f"cuda:{ctx.local_rank}" if ctx.device.type == "cuda" else "cpu"
    argv = [str(s.out_dir / ARTIFACT_NAME), "--data", str(s.data_path), "--tokenizer", str(s.tokenizer_path),
            "--device", device, "--no-progress", "--json", str(s.out_dir / "eval.json"),
            *s.eval.eval_argv()]
    if s.eval.ttt:
        argv += ["--chunk-log", str(s.out_dir / "ttt_chunks.jsonl")]
    summary = run(build_parser().parse_args(argv))
    if s.eval.ttt:  # the eval CLI keeps only the bpb of the pre-TTT sliding score
        log(f"final_int6_sliding_window val_bpb:{summary['pre_ttt_val_bpb']:.4f} stride:{s.eval.stride} "
            f"eval_time:{summary['sliding_seconds'] * 1000:.0f}ms",
            f"final_int6_sliding_window_exact val_bpb:{summary['pre_ttt_val_bpb']:.8f}")
        ttt = summary["ttt"]
        log(*score_lines("legal_ttt", summary["val_loss"], summary["val_bpb"],
                         ttt["score_seconds"] + ttt["train_seconds"]))
    else:
        log(*score_lines("final_int6_sliding_window", summary["val_loss"], summary["val_bpb"],
                         summary["sliding_seconds"]))
    return summary


def run(s: ChallengeSettings, code_path=None) -> dict:
    """Train, write + re-read the artifact, evaluate; returns the figures (printed last as one JSON line)."""
    ctx = setup_distributed()  # joined once here, so training and eval share the process group
    try:
        s.out_dir.mkdir(parents=True, exist_ok=True)
        log = ChallengeLog(s.out_dir / "logs" / f"{s.run_id}.txt", enabled=ctx.is_main)
        log_header(log, s, ctx)
        logger = functools.partial(ChallengeMetricsLogger, log=log, total_steps=s.train.steps)
        trained = run_training(s.train, s.model, s.data_path, s.out_dir, tokenizer_path=s.tokenizer_path,
                               progress=False, logger_factory=logger)
        quant = write_artifact(s, code_path, log) if ctx.is_main else {}
        if ctx.world_size > 1:
            torch.distributed.barrier()
        quant.update(roundtrip_score(s, ctx, log))
        evaluated = final_eval(s, ctx, log)
        figures = {"event": "challenge_run", "run_id": s.run_id, "train": trained, "quant": quant,
                   "eval": evaluated}
        if ctx.is_main:
            write_json(s.out_dir / "quant.json", quant)
            write_json(s.out_dir / "run_info.json", {
                "hardware": hardware(ctx), "world_size": ctx.world_size, "python": platform.python_version(),
                "torch": torch.__version__, "run_id": s.run_id, "code_path": str(code_path) if code_path else None})
            print(json.dumps(figures, default=str), flush=True)
        return figures
    finally:
        teardown_distributed(ctx)


def main(defaults: dict, code_path=None, environ=None) -> dict:
    """Entry point of the bundled train_gpt.py: settings from the environment over `defaults`, then run.
    Bad input is one `error:` line and a non-zero exit (common.cli_errors), as in the package's CLIs."""
    def job() -> dict:
        settings = settings_from_env(defaults, environ)
        try:
            return run(settings, code_path)
        except TrainingDiverged as exc:
            raise CLIError(str(exc)) from exc

    result = run_cli(job)
    if isinstance(result, int):  # run_cli's exit status, after the error line
        raise SystemExit(result)
    return result

"""`python -m eval MODEL --data DIR [--ttt]`: exact sliding-window val_bpb, optionally with legal score-first TTT.

MODEL is a compressed artifact (recognised by its magic) or a trained model / checkpoint file. Prints the
sliding-window val_loss and val_bpb (the pre-TTT score), then with --ttt the post-TTT score and timing, and
last a one-line JSON summary. Runs on CPU or GPU (bf16 autocast); under torchrun the windows and the TTT
sequences are split across ranks and the float64 sums all-reduced.

Everything is checked before the first window is scored: the arguments' ranges, the output paths, the model
file (eval.loading), the tokenizer against the model (vocab size and, where the file records it, the tokenizer's
fingerprint: another tokenizer of the same size would give a wrong val_bpb), and the TTT settings against the
model (chunk a multiple of the window, frozen blocks within its depth). Errors are one line (common.cli_errors);
a non-finite figure in the summary makes the exit status 1.

Before the first window it prints the plan (eval.plan: windows, batches, chunks, scored and trained tokens,
FLOPs); after the third TTT chunk, the projected total time. `--ttt-budget-s S` times a score batch and an SGD
step on random tokens first and runs the largest epoch count (at most --ttt-max-epochs) whose projected total,
counted from the start of the command, fits S seconds, and says which. Forwards are compiled by default on CUDA
(--no-compile to run them eagerly); with --int6-kernel, int6 matrices take the kernel only for small row counts
and cached dense weights otherwise (eval.int6_cache). TTT's training forwards fake-quantize (int6 STE) when the
model file or artifact records that late QAT fired in its training, which is PR #598's procedure (its late-QAT
flag stayed on through its TTT); --ttt-qat / --no-ttt-qat decide it instead, and the line before the first
window says which and why.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from eval.distributed import init_from_env, shutdown
from eval.loading import build_model, read_model_source
from eval.report import ChunkLog, plot_chunks, summary_line, write_json
from eval.int6_cache import route_int6_by_size
from eval.plan import make_plan
from eval.scoring import evaluate, stream_target_bytes
from eval.ttt import ScoreFirstTTT, TTTConfig
from kernels.ops import parse_overrides, policy_from_flags
from common.cli_errors import (ArgumentParser, CLIError, check_cuda_device, check_input_file, check_output_file,
                              fail_on_nonfinite, nonnegative_float, nonnegative_int, positive_float, positive_int,
                              run_cli, unit_interval)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    p.add_argument("model", help="artifact (quant.artifact) or model/checkpoint file ({'config','model'})")
    p.add_argument("--data", required=True, help="folder holding fineweb_val_*.bin shards")
    p.add_argument("--tokenizer", help="SentencePiece model (default: DATA/tokenizer.model)")
    p.add_argument("--stride", type=positive_int, default=64, help="sliding-window stride (default 64)")
    p.add_argument("--window", type=positive_int, help="window length (default: the model's seq_len)")
    p.add_argument("--batch", type=positive_int, default=32, help="windows per forward (default 32)")
    p.add_argument("--max-tokens", type=positive_int, help="score only the first N targets of the val stream")
    p.add_argument("--seed-quirk", action="store_true",
                   help="reproduce PR 598's duplicated tail windows (last `stride` targets scored repeatedly)")
    p.add_argument("--ttt", action="store_true", help="legal score-first test-time training")
    p.add_argument("--ttt-epochs", type=nonnegative_int, default=10, help="SGD epochs per chunk (default 10)")
    p.add_argument("--ttt-chunk", type=positive_int, default=32768,
                   help="TTT chunk size in tokens, a multiple of the window (default 32768)")
    p.add_argument("--ttt-lr", type=positive_float, default=0.002, help="peak SGD learning rate (default 0.002)")
    p.add_argument("--ttt-freeze", type=nonnegative_int, default=2,
                   help="freeze the first N blocks (at most the model's depth; default 2)")
    p.add_argument("--ttt-momentum", type=unit_interval, default=0.9, help="SGD momentum in [0, 1] (default 0.9)")
    p.add_argument("--ttt-clip", type=nonnegative_float, default=1.0, help="gradient-norm clip (0 = off)")
    p.add_argument("--ttt-warmup", type=unit_interval, default=0.0,
                   help="linear LR warmup over this fraction of chunks")
    p.add_argument("--ttt-batch-seqs", type=positive_int, default=32, help="sequences per TTT micro-batch")
    p.add_argument("--ttt-qat", action=argparse.BooleanOptionalAction, default=None,
                   help="fake int6 STE quantization in the TTT training forwards (default: on when the model file "
                        "records that late QAT fired in its training, as PR #598's TTT did; --no-ttt-qat: off)")
    p.add_argument("--ttt-detach-frozen", action="store_true",
                   help="run the frozen blocks under no_grad in TTT training (cheaper; the embeddings then get no "
                        "gradient through them: not PR 598's recipe)")
    p.add_argument("--ttt-budget-s", type=positive_float,
                   help="run the most TTT epochs whose projected total time (from the start) fits this many seconds")
    p.add_argument("--ttt-max-epochs", type=positive_int, default=50,
                   help="the most epochs --ttt-budget-s may choose (default 50)")
    p.add_argument("--skip-baseline", action="store_true", help="with --ttt, skip the pre-TTT sliding score")
    p.add_argument("--log", "--chunk-log", dest="log",
                   help="per-chunk JSONL log, a PNG plot is written next to it (under torchrun spell it "
                        "--chunk-log: torchrun's own parser rejects --log as an ambiguous prefix)")
    p.add_argument("--json", help="write the final summary JSON here too")
    p.add_argument("--backend", choices=("eager", "triton"),
                   help="whole-model kernel policy (default: the model file's; see kernels.ops)")
    p.add_argument("--kernels", metavar="FAMILY=CHOICE,...",
                   help="per op family overrides (triton|eager|inductor) on top of the policy, e.g. "
                        "attention=triton,rms_norm=inductor")
    p.add_argument("--int6-kernel", action="store_true",
                   help="run int6 matrices through the int6-dequant matmul (with --ttt: the frozen blocks only)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the scoring and TTT forwards (default: on CUDA only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--cpu-threads", type=positive_int,
                   help="torch CPU threads (1 is fastest on small, busy machines)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (also off when stderr is not a terminal)")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation; returns the summary. Bad input: one error line, then SystemExit with a non-zero code."""
    args = build_parser().parse_args(argv)
    try:
        result = run_cli(lambda: run(args))
    finally:
        shutdown()
    if isinstance(result, int):
        raise SystemExit(result)
    code = fail_on_nonfinite({k: v for k, v in result.items() if k in FIGURES})
    if code:
        raise SystemExit(code)
    return result


FIGURES = ("val_loss", "val_bpb", "pre_ttt_val_bpb", "post_ttt_val_bpb", "ttt")


def check_outputs(args: argparse.Namespace) -> None:
    """The report files (replaced if present) must be writable before any work starts."""
    if args.log:
        check_output_file(args.log, overwrite=True, flag="--log")
        check_output_file(Path(args.log).with_suffix(".png"), overwrite=True, flag="--log's plot")
    if args.json:
        check_output_file(args.json, overwrite=True, flag="--json")


def check_settings(args: argparse.Namespace, cfg, window: int, world: int) -> None:
    """The arguments that depend on the model, checked before the first window is scored."""
    if args.stride > window:
        raise CLIError(f"--stride {args.stride} is larger than the window {window}; targets would go unscored")
    if not args.ttt:
        if args.ttt_budget_s is not None:
            raise CLIError("--ttt-budget-s sizes the TTT epochs: it needs --ttt")
        return
    if args.ttt_freeze > cfg.num_layers:
        raise CLIError(f"--ttt-freeze {args.ttt_freeze}: the model has only {cfg.num_layers} blocks")
    if args.ttt_chunk % window:
        raise CLIError(f"--ttt-chunk {args.ttt_chunk} must be a multiple of the window {window} (TTT trains on "
                       "whole sequences aligned to the chunk start)")
    if (args.ttt_chunk // window) % world:
        raise CLIError(f"--ttt-chunk {args.ttt_chunk} holds {args.ttt_chunk // window} sequences, which do not "
                       f"split evenly over {world} ranks")


def run(args: argparse.Namespace) -> dict:
    """Check, load, score (and with --ttt adapt), report; returns the summary dict printed last."""
    from common.shards import list_shards, load_validation_tokens
    from train.data.tokenizer import build_byte_luts, check_vocab, load_tokenizer
    from common.provenance import check_tokenizer

    started = time.perf_counter()  # --ttt-budget-s counts from here
    check_cuda_device(args.device)
    try:
        parse_overrides(args.kernels or "")
    except ValueError as e:
        raise CLIError(f"--kernels: {e}") from e
    check_outputs(args)
    list_shards(args.data, "val")
    tokenizer_path = check_input_file(Path(args.tokenizer) if args.tokenizer else Path(args.data) / "tokenizer.model",
                                      "tokenizer")
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    if not args.device.startswith("cuda"):
        # Triton kernels on CPU run under the interpreter, which is read when kernels are decorated (at import)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    source = read_model_source(args.model, int6_kernel=args.int6_kernel)
    cfg, kind = source.config, source.kind
    sp = load_tokenizer(tokenizer_path)
    try:
        check_vocab(sp, cfg.vocab_size)
    except ValueError as e:
        raise CLIError(f"{tokenizer_path} does not fit {args.model}: {e}") from e
    check_tokenizer(source.provenance, tokenizer_path, args.model)
    ttt_qat, ttt_qat_from = resolve_ttt_qat(args.ttt_qat, source.provenance)
    window = args.window or cfg.seq_len
    check_settings(args, cfg, window, int(os.environ.get("WORLD_SIZE", "1")))
    rank, world, device = init_from_env(args.device)
    say = print if rank == 0 else (lambda *a, **k: None)
    frozen = tuple(f"blocks.{i}." for i in range(args.ttt_freeze)) if args.ttt else None
    model, cfg = build_model(source, device=device, backend=args.backend, int6_prefixes=frozen, where=args.model)
    del source
    if args.backend or args.kernels:  # --backend: a whole-model policy; --kernels: families on top (kernels.ops)
        model.set_kernels(*policy_from_flags(args.backend, args.kernels, "", False, base=(cfg.backend, cfg.kernels)))
        cfg = model.cfg
    if args.int6_kernel:
        route_int6_by_size(model)
    luts = build_byte_luts(sp, cfg.vocab_size)
    val_tokens = load_validation_tokens(args.data, cfg.seq_len, cfg.vocab_size)
    if args.max_tokens:
        val_tokens = val_tokens[:args.max_tokens + 1]
    nbytes = stream_target_bytes(val_tokens, luts)
    progress = not args.no_progress and sys.stderr.isatty()
    say(f"eval: {kind} {args.model} | {model.num_params():,} params | backend {cfg.backend} | device {device} "
        f"x{world} | {len(val_tokens) - 1:,} targets | window {window} stride {args.stride}")
    common = dict(target_bytes=nbytes, window=window, stride=args.stride, batch=args.batch, seed_quirk=args.seed_quirk,
                  compile=args.compile)
    config = None
    if args.ttt:
        config = TTTConfig(chunk_tokens=args.ttt_chunk, epochs=args.ttt_epochs, lr=args.ttt_lr,
                           momentum=args.ttt_momentum, freeze_blocks=args.ttt_freeze, grad_clip=args.ttt_clip,
                           warmup_frac=args.ttt_warmup, batch_seqs=args.ttt_batch_seqs, qat=ttt_qat,
                           detach_frozen=args.ttt_detach_frozen)
    plan = make_plan(cfg, len(val_tokens) - 1, window=window, stride=args.stride, batch=args.batch,
                     seed_quirk=args.seed_quirk, world=world, sliding=not (args.ttt and args.skip_baseline), ttt=config)
    for line in plan.describe():
        say(line + (" (epochs: set by --ttt-budget-s once timed)" if args.ttt_budget_s and "TTT training" in line
                    else ""))
    if args.ttt:
        say(f"ttt fake-quant: {'on' if ttt_qat else 'off'} ({TTT_QAT_REASONS[ttt_qat_from]})")
    summary = {"model": str(args.model), "kind": kind, "window": window, "stride": args.stride,
               "seed_quirk": args.seed_quirk, "targets": len(val_tokens) - 1, "world_size": world,
               "plan": plan.to_dict()}
    baseline = None
    if not (args.ttt and args.skip_baseline):
        baseline = evaluate(model, val_tokens, progress=progress, **common)
        say(f"sliding val_loss:{baseline['val_loss']:.6f} val_bpb:{baseline['val_bpb']:.6f} "
            f"({baseline['windows']:,} windows, {baseline['tokens_per_s']:,.0f} tok/s, {baseline['seconds']:.1f}s)")
        summary.update(val_loss=baseline["val_loss"], val_bpb=baseline["val_bpb"], pre_ttt_val_bpb=baseline["val_bpb"],
                       pre_ttt_val_loss=baseline["val_loss"], sliding_seconds=baseline["seconds"],
                       sliding_tokens_per_s=baseline["tokens_per_s"])
    if args.ttt:
        if len(val_tokens) - 1 <= args.ttt_chunk:
            say(f"warning: the {len(val_tokens) - 1:,} targets fit in one TTT chunk of {args.ttt_chunk:,}; "
                "the last chunk is never trained on, so TTT changes nothing (pass a smaller --ttt-chunk)")
        ttt = ScoreFirstTTT(model, val_tokens, config=config, started_at=started, **common)
        log = ChunkLog(args.log if rank == 0 else None)
        try:
            if args.ttt_budget_s is not None:
                say(budget_line(ttt.fit_epochs_to_budget(args.ttt_budget_s, args.ttt_max_epochs)))
            result = ttt.run(progress=progress, on_chunk=lambda record: report_chunk(record, log, say))
        finally:
            log.close()
            ttt.restore_requires_grad()
        say(f"ttt val_loss:{result['val_loss']:.6f} val_bpb:{result['val_bpb']:.6f} "
            f"({result['chunks']} chunks; scored {result['score_tokens_per_s']:,.0f} tok/s, "
            f"trained {result['train_tokens_per_s']:,.0f} tok/s; {result['score_seconds']:.1f}s + "
            f"{result['train_seconds']:.1f}s; {result['trainable_params']:,} trainable params)")
        summary.update(val_loss=result["val_loss"], val_bpb=result["val_bpb"], post_ttt_val_bpb=result["val_bpb"],
                       ttt={**{k: v for k, v in result.items() if k not in ("chunk_log", "val_loss", "val_bpb")},
                            "qat_from": ttt_qat_from})
        if args.log and rank == 0:
            png = Path(args.log).with_suffix(".png")
            if plot_chunks(result["chunk_log"], png, baseline["val_bpb"] if baseline else None):
                summary["plot"] = str(png)
    if rank == 0:
        if args.json:
            write_json(summary, args.json)
        print(summary_line(summary))
    return summary


TTT_QAT_REASONS = {
    "flag": "as --ttt-qat / --no-ttt-qat says",
    "model file": "the model file records whether late QAT fired in its training; PR #598's TTT fake-quantized "
                  "when it had, and --ttt-qat / --no-ttt-qat override",
    "not recorded": "the model file does not record whether late QAT fired (written before that was recorded); "
                    "--ttt-qat gives PR #598's procedure for a model trained with late QAT",
}


def resolve_ttt_qat(flag: bool | None, provenance: dict | None) -> tuple[bool, str]:
    """(fake-quantize the TTT training forwards?, where that came from: a key of TTT_QAT_REASONS)."""
    from common.provenance import recorded_late_qat

    if flag is not None:
        return flag, "flag"
    recorded = recorded_late_qat(provenance)
    return (False, "not recorded") if recorded is None else (recorded, "model file")


PROJECT_AFTER_CHUNK = 2  # the projected total is printed once this chunk is scored (chunk 0 carries compilation)


def report_chunk(record: dict, log: ChunkLog, say) -> None:
    """Log a TTT chunk; after the first chunks, say the projected total time."""
    log.write(record)
    if record["chunk"] == PROJECT_AFTER_CHUNK and record.get("projected_total_s") is not None:
        say(f"projected total {record['projected_total_s']:.1f}s ({record['elapsed_s']:.1f}s so far, "
            f"{PROJECT_AFTER_CHUNK + 1} chunks scored)")


def budget_line(choice: dict) -> str:
    return (f"ttt budget {choice['budget_s']:.0f}s: {choice['epochs']} epochs (at most {choice['max_epochs']}), "
            f"projected {choice['total_s']:.1f}s = {choice['elapsed_s']:.1f}s so far + scoring {choice['score_s']:.1f}s "
            f"+ training {choice['train_s']:.1f}s ({choice['batch_s'] * 1e3:.1f} ms per score batch, "
            f"{choice['step_s'] * 1e3:.1f} ms per SGD step, timed on random tokens)")


if __name__ == "__main__":
    main()

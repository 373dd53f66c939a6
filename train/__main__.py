"""CLI: `python -m train --preset tiny --data DIR --out RUNDIR [--steps N] ...`, also under
`torchrun --standalone --nproc_per_node=N -m train ...` (DDP; NCCL on GPU, gloo on CPU).

Without --data the `tiny` preset trains on the embedded corpus (train.data.embedded) and other presets read
$DATA_DIR. With --resume the model and training configs come from the checkpoint (flags that would change them
are refused), the data must be given again (--data or $DATA_DIR) and be the data the checkpoint was trained on,
and the run continues in --out (default: the checkpoint's directory).

`--print-config` prints the resolved configuration beside PR #598's run (train.seed_run) and exits: with
`--preset seed` and no other flag every training and model value is the seed's run command's, apart from the
deviations the README lists.

An --out folder that already holds a run (checkpoint, final model, metrics) is refused unless --overwrite is
given or the run is resumed there. Every argument and path is checked before training starts; errors are one
line (common.cli_errors); Ctrl-C names the checkpoint to resume from; a non-finite figure exits with status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from common.cli_errors import (ArgumentParser, CLIError, check_input_file, check_output_dir, fail_on_nonfinite,
                              nonnegative_float, nonnegative_int, positive_float, positive_int, run_cli,
                              unit_interval)
from train.config import TRAIN_PRESETS

RUN_FILES = ("checkpoint.pt", "final_model.pt", "metrics.jsonl", "loss_curve.png")  # train.loop's outputs
FIGURES = ("train_loss", "val_loss", "val_bpb", "ema_val_loss", "ema_val_bpb")

# CLI flag -> (type, help) for the TrainConfig fields a flag may override (unset flags keep the preset's value)
TRAIN_FLAGS = {
    "steps": (positive_int, "optimizer steps"),
    "batch_tokens": (positive_int, "tokens per optimizer step, all ranks and micro-steps together"),
    "grad_accum": (positive_int, "micro-steps per optimizer step on each rank (default: accum_total / world size)"),
    "warmdown_steps": (nonnegative_int, "last steps over which the LR decays to 0"),
    "warmdown_shape": (str, "LR decay shape: linear or cosine"),
    "max_wallclock_seconds": (nonnegative_float, "stop at this training time and size the warmdown in time (0: off)"),
    "grad_clip": (nonnegative_float, "global gradient-norm clip (0: off)"),
    "ema_decay": (unit_interval, "EMA decay of the weights saved as final_model.pt"),
    "val_every": (nonnegative_int, "validate every N steps (0: only at the end)"),
    "val_max_tokens": (nonnegative_int, "validate on the first N val tokens (0: the whole val split)"),
    "val_batch_seqs": (positive_int, "sequences per validation forward"),
    "log_every": (positive_int, "a metrics.jsonl record every N steps"),
    "checkpoint_every": (nonnegative_int, "write checkpoint.pt every N steps (0: only at the end)"),
    "matrix_lr": (nonnegative_float, "Muon learning rate of the block matrices"),
    "scalar_lr": (nonnegative_float, "AdamW learning rate of the scalars and vectors"),
    "tok_lr": (nonnegative_float, "AdamW learning rate of the token embedding"),
    "decoder_lr_mult": (positive_float, "LR multiplier of the decoder half's matrices"),
    "muon_momentum_warmup_steps": (nonnegative_int, "steps over which Muon's momentum ramps to its final value"),
    "late_qat_threshold": (unit_interval, "late QAT fires once the LR multiplier drops below this (0: never)"),
    "late_qat_in_training": (bool, "once late QAT fired, fake-quantize the training forwards (seed: no, its "
                                   "compiled graph never saw the flag; either way TTT fake-quantizes by default)"),
    "warmup_steps": (nonnegative_int, "the seed's warm-up: N real steps on the first batches, then weights, "
                                      "optimizers and loader restored (seed: 20)"),
    "accumulate_bigram_scale_grad": (bool, "never clear bigram.scale's gradient (in no optimizer): it sums over "
                                           "the warm-up and every step and counts toward the clip norm, as in "
                                           "PR #598 (seed preset); --no-accumulate-bigram-scale-grad clears it"),
    "tok_emb_dtype": (str, "storage dtype of tok_emb: bfloat16 (the seed's) or float32"),
    "seed": (int, "torch seed of the model init and data-independent randomness"),
}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS), help="training + model preset")
    p.add_argument("--data", help="directory with fineweb_{train,val}_*.bin (+ tokenizer.model)")
    p.add_argument("--tokenizer", help="SentencePiece model (default: DATA/tokenizer.model)")
    p.add_argument("--out", help="run directory (default: runs/<preset>-<time>; with --resume, the checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace the run an --out folder already holds")
    p.add_argument("--resume", help="continue from this training checkpoint")
    p.add_argument("--stop-at-step", type=positive_int,
                   help="end the run after this step with a checkpoint (no final model)")
    p.add_argument("--backend", choices=("eager", "triton"),
                   help="whole-model kernel policy (default: on CUDA the Triton kernels, with the norms and residual "
                        "glue left to Inductor under compile; on the CPU eager; see kernels.ops)")
    p.add_argument("--kernels", metavar="FAMILY=CHOICE,...",
                   help="per op family overrides (triton|eager|inductor) on top of the policy, e.g. "
                        "attention=triton,rms_norm=inductor; families: attention, mlp, rms_norm, residual_norm, "
                        "qk_norm_rope, cross_entropy, int6")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model, fullgraph, static shapes (default: on CUDA only)")
    p.add_argument("--compile-backend", default="inductor", choices=("inductor", "aot_eager"),
                   help="torch.compile backend (aot_eager: traces without generating code, for CPU checks)")
    p.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig field, e.g. --model num_layers=6 (repeatable)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (also off when stderr is not a terminal)")
    p.add_argument("--cpu-threads", type=positive_int,
                   help="torch.set_num_threads (CPU runs on a busy machine: 1 is often fastest)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration beside PR #598's run command's values, then exit")
    for name, (kind, text) in TRAIN_FLAGS.items():
        if kind is bool:
            p.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None,
                           dest=name, help=text)
        else:
            p.add_argument("--" + name.replace("_", "-"), type=kind, dest=name, help=text)
    return p


def configs_from_args(args):
    from model.config import get_config
    from train.config import get_train_config

    overrides = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    overrides["compile"] = compile_default(args)
    tcfg = get_train_config(args.preset, **overrides)
    model_overrides = {}
    for item in args.model:
        if "=" not in item:
            raise CLIError(f"--model expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        model_overrides[key] = parse_value(value)
    # the kernel policy: --backend / --kernels on top of --model backend=/kernels= if given, else the default
    base = (model_overrides.pop("backend", "eager"), model_overrides.pop("kernels", "")) \
        if {"backend", "kernels"} & model_overrides.keys() else None
    model_overrides["backend"], model_overrides["kernels"] = kernel_flags(args, tcfg.compile, base)
    try:
        mcfg = get_config(tcfg.model_preset, **model_overrides)
    except TypeError as e:  # a value of the wrong type, e.g. --model ve_layers=3
        raise CLIError(f"--model: {e}") from e
    from model.validate import validate_config
    validate_config(mcfg.to_dict(), "--model")  # the bounds a loader enforces: no 100,000-layer typo
    return tcfg, mcfg


def configs_from_checkpoint(args, ckpt: dict):
    from model.config import ModelConfig
    from train.config import TrainConfig

    changed = [k for k in TRAIN_FLAGS if getattr(args, k) is not None] + (["model"] if args.model else [])
    if changed:
        raise CLIError(f"--resume takes its configs from the checkpoint; drop {changed}")
    mcfg = ModelConfig.from_dict(ckpt["config"])
    tcfg = TrainConfig.from_dict(ckpt["train_config"])
    if args.compile is not None:  # neither changes the trained weights: a resumed run may switch them
        tcfg = dataclasses.replace(tcfg, compile=args.compile)
    if args.backend or args.kernels:
        backend, kernels = kernel_flags(args, tcfg.compile, (mcfg.backend, mcfg.kernels))
        mcfg = dataclasses.replace(mcfg, backend=backend, kernels=kernels)
    return tcfg, mcfg


def compile_default(args) -> bool:
    """--compile / --no-compile as given, else on when CUDA is present."""
    import torch
    return torch.cuda.is_available() if args.compile is None else args.compile


def kernel_flags(args, compiled: bool, base: tuple[str, str] | None = None) -> tuple[str, str]:
    """(backend, kernels) of ModelConfig from --backend / --kernels (kernels.ops.policy_from_flags)."""
    import torch

    from kernels.ops import policy_from_flags
    try:
        return policy_from_flags(args.backend, args.kernels, "cuda" if torch.cuda.is_available() else "cpu",
                                 compiled, base)
    except ValueError as e:
        raise CLIError(f"kernel policy: {e}") from e


def resolve_data_dir(args, preset: str, ckpt: dict | None) -> Path:
    if args.data:
        return Path(args.data)
    if os.environ.get("DATA_DIR"):
        return Path(os.environ["DATA_DIR"])
    if ckpt is not None:
        recorded = (ckpt.get("provenance") or {}).get("data_dir")
        raise CLIError("--resume needs --data DIR, the data the checkpoint was trained on"
                       + (f" ({recorded})" if recorded else ""))
    if preset == "tiny":
        from train.data.embedded import ensure_embedded_corpus
        return ensure_embedded_corpus()
    raise CLIError(f"--data is required for preset {preset!r} (or set DATA_DIR)")


def check_run_dir(out_dir: Path, args) -> None:
    """--out must be a writable folder and hold no run this command would replace (unless asked to)."""
    check_output_dir(out_dir)
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not existing or args.overwrite:
        return
    ckpt = out_dir / RUN_FILES[0]
    if args.resume and ckpt.exists() and ckpt.samefile(args.resume):
        return  # continuing the run in its own folder
    raise CLIError(f"--out {out_dir} already holds a run ({', '.join(existing)}); pass --overwrite to replace it"
                   + (f", or --resume {ckpt} to continue it" if ckpt.exists() else ""))


def interrupt_message(run: dict) -> str:
    """What Ctrl-C leaves behind: the checkpoint written last (this run's, else the one it resumed from)."""
    ckpt = run.get("out_dir", Path(".")) / RUN_FILES[0]
    if "started" in run and ckpt.exists() and ckpt.stat().st_mtime >= run["started"]:
        last = ckpt
    elif run.get("resume"):
        last = Path(run["resume"])
    else:
        return "interrupted (Ctrl-C) before any checkpoint was written; nothing to resume"
    step = ""
    try:
        import torch
        step = f" (step {int(torch.load(last, map_location='cpu', weights_only=True, mmap=True)['step'])})"
    except Exception:  # noqa: BLE001 - the message still names the file
        pass
    return (f"interrupted (Ctrl-C); the last checkpoint is {last}{step}: continue with "
            f"python -m train --resume {last} --data {run.get('data_dir')}")


def run(args, state: dict) -> int:
    """Check everything, then train; returns the exit status."""
    from common.checkpoint import load_checkpoint

    if args.cpu_threads:
        import torch
        torch.set_num_threads(args.cpu_threads)
    ckpt = load_checkpoint(args.resume) if args.resume else None
    tcfg, mcfg = configs_from_checkpoint(args, ckpt) if ckpt is not None else configs_from_args(args)
    if args.print_config:
        from train.seed_run import print_config
        print_config(tcfg, mcfg, args.preset if ckpt is None else f"{tcfg.model_preset} (from {args.resume})")
        return 0
    data_dir = resolve_data_dir(args, tcfg.model_preset, ckpt)
    del ckpt
    if args.tokenizer:
        check_input_file(args.tokenizer, "tokenizer")
    if args.out:
        out_dir = Path(args.out)
    elif args.resume:
        out_dir = Path(args.resume).parent
    else:
        out_dir = Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_run_dir(out_dir, args)
    state.update(out_dir=out_dir, data_dir=data_dir, resume=args.resume, started=time.time())
    from train.loop import TrainingDiverged, run_training

    try:
        summary = run_training(tcfg, mcfg, data_dir, out_dir, tokenizer_path=args.tokenizer, resume=args.resume,
                               stop_at_step=args.stop_at_step, progress=not args.no_progress and sys.stderr.isatty(),
                               compile_backend=args.compile_backend)
    except TrainingDiverged as exc:
        raise CLIError(str(exc)) from exc
    return fail_on_nonfinite(summary, FIGURES)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    state: dict = {}
    return run_cli(lambda: run(args, state), on_interrupt=lambda: interrupt_message(state))


if __name__ == "__main__":
    sys.exit(main())

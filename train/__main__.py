"""CLI: `python -m train --preset tiny --data DIR --out RUNDIR [--steps N] ...`, also under
`torchrun --standalone --nproc_per_node=N -m train ...` (DDP; NCCL on GPU, gloo on CPU).

Without --data the `tiny` preset trains on the embedded corpus (train.data.embedded) and other presets read
$DATA_DIR. With --resume the model and training configs come from the checkpoint (flags that would change them
are refused) and the run continues in --out (default: the checkpoint's directory).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from model.config import ModelConfig, get_config
from train.config import TRAIN_PRESETS, TrainConfig, get_train_config

# CLI flag -> TrainConfig field (all optional; unset flags keep the preset's value)
TRAIN_FLAGS = {
    "steps": int, "batch_tokens": int, "grad_accum": int, "warmdown_steps": int, "warmdown_shape": str,
    "max_wallclock_seconds": float, "grad_clip": float, "ema_decay": float, "val_every": int,
    "val_max_tokens": int, "val_batch_seqs": int, "log_every": int, "checkpoint_every": int, "matrix_lr": float,
    "scalar_lr": float, "tok_lr": float, "decoder_lr_mult": float, "muon_momentum_warmup_steps": int,
    "late_qat_threshold": float, "seed": int,
}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS), help="training + model preset")
    p.add_argument("--data", help="directory with fineweb_{train,val}_*.bin (+ tokenizer.model)")
    p.add_argument("--tokenizer", help="SentencePiece model (default: DATA/tokenizer.model)")
    p.add_argument("--out", help="run directory (default: runs/<preset>-<time>)")
    p.add_argument("--resume", help="continue from this training checkpoint")
    p.add_argument("--stop-at-step", type=int, help="end the run after this step with a checkpoint (no final model)")
    p.add_argument("--backend", choices=("eager", "triton"), help="kernel backend (default: eager)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU runs)")
    p.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig field, e.g. --model num_layers=6 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--cpu-threads", type=int,
                   help="torch.set_num_threads (CPU runs on a busy machine: 1 is often fastest)")
    for name, kind in TRAIN_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, dest=name)
    return p


def configs_from_args(args) -> tuple[TrainConfig, ModelConfig]:
    overrides = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if args.compile:
        overrides["compile"] = True
    tcfg = get_train_config(args.preset, **overrides)
    model_overrides = {}
    for item in args.model:
        if "=" not in item:
            raise SystemExit(f"--model expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        model_overrides[key] = parse_value(value)
    if args.backend:
        model_overrides["backend"] = args.backend
    return tcfg, get_config(tcfg.model_preset, **model_overrides)


def configs_from_checkpoint(args) -> tuple[TrainConfig, ModelConfig]:
    from train.checkpoint import load_checkpoint

    changed = [k for k in TRAIN_FLAGS if getattr(args, k) is not None] + (["model"] if args.model else [])
    if changed:
        raise SystemExit(f"--resume takes its configs from the checkpoint; drop {changed}")
    ckpt = load_checkpoint(args.resume)
    mcfg = ModelConfig.from_dict(ckpt["config"])
    if args.backend:
        mcfg = dataclasses.replace(mcfg, backend=args.backend)
    return TrainConfig.from_dict(ckpt["train_config"]), mcfg


def resolve_data_dir(args, preset: str) -> Path:
    if args.data:
        return Path(args.data)
    if os.environ.get("DATA_DIR"):
        return Path(os.environ["DATA_DIR"])
    if preset == "tiny":
        from train.data.embedded import ensure_embedded_corpus
        return ensure_embedded_corpus()
    raise SystemExit(f"--data is required for preset {preset!r} (or set DATA_DIR)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cpu_threads:
        import torch
        torch.set_num_threads(args.cpu_threads)
    tcfg, mcfg = configs_from_checkpoint(args) if args.resume else configs_from_args(args)
    data_dir = resolve_data_dir(args, tcfg.model_preset)
    if args.out:
        out_dir = Path(args.out)
    elif args.resume:
        out_dir = Path(args.resume).parent
    else:
        out_dir = Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    from train.loop import TrainingDiverged, run_training

    try:
        run_training(tcfg, mcfg, data_dir, out_dir, tokenizer_path=args.tokenizer, resume=args.resume,
                     stop_at_step=args.stop_at_step, progress=not args.no_progress)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

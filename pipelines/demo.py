"""The main job (`make demo`): embedded corpus -> train `tiny` -> quantize -> sliding-window eval with legal TTT.

Each stage runs as the very command a user would type (`python -m train`, `python -m quant`, `python -m eval`),
so the demo also exercises the CLIs. It prints every stage's own output, then the stage table the README shows
(val_bpb after each stage) and one final JSON line with the figures: the unigram baseline, the trained model's
val_bpb (live and EMA weights), the quantized one, the artifact size, and pre/post-TTT val_bpb.
On a GPU the same stages run there (the stages pick CUDA when present).

The default run folder, runs/demo, is the demo's own and is replaced on every run; another --out folder that
already holds a run is refused unless --overwrite is given.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from eval.baseline import unigram_bpb
from common.cli_errors import (ArgumentParser, fail_on_nonfinite, nonnegative_int, positive_float, positive_int,
                              run_cli)
from train.data.embedded import default_root, ensure_embedded_corpus

DEFAULT_OUT = "runs/demo"


def run_stage(title: str, argv: list[str]) -> dict:
    """Run `python -m ...argv`, stream its output, and return its last stdout line parsed as JSON."""
    print(f"\n=== {title}: python -m {' '.join(argv)}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, text=True)
    last_json = None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("{"):
            last_json = line
    if proc.wait() != 0:
        raise SystemExit(f"demo: stage '{title}' failed with exit code {proc.returncode}")
    if last_json is None:
        raise SystemExit(f"demo: stage '{title}' printed no final JSON line")
    return json.loads(last_json)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m pipelines.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"run folder (default {DEFAULT_OUT}, replaced on every run)")
    p.add_argument("--overwrite", action="store_true", help="replace the run another --out folder holds")
    p.add_argument("--steps", type=positive_int, help="training steps (default: the tiny preset's)")
    p.add_argument("--ttt-chunk", type=positive_int, default=2048,
                   help="TTT chunk in tokens (the embedded val split is ~25K tokens; 32768 would be one chunk)")
    p.add_argument("--ttt-epochs", type=nonnegative_int, default=10, help="TTT epochs per chunk (default 10)")
    p.add_argument("--ttt-lr", type=positive_float, default=0.002, help="TTT learning rate (default 0.002)")
    p.add_argument("--backend", choices=("eager", "triton"), default="eager",
                   help="kernel backend (triton is slow on CPU: the kernels run in Triton's interpreter)")
    p.add_argument("--cpu-threads", type=positive_int, default=1,
                   help="torch CPU threads per stage (1 is fastest for the tiny model on small machines)")
    return p


def stage_table(figures: dict) -> str:
    """The README's table: val_bpb after each stage of the demo."""
    def bpb(value) -> str:
        return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"

    size = figures.get("artifact_bytes")
    rows = [("unigram baseline (train token frequencies)", figures.get("unigram_val_bpb")),
            (f"trained, live weights at step {figures.get('train_steps')}", figures.get("trained_val_bpb")),
            ("trained, EMA weights (`final_model.pt`)", figures.get("ema_val_bpb")),
            (f"int6/int8 artifact, dequantized ({size:,} bytes)" if isinstance(size, int)
             else "int6/int8 artifact, dequantized", figures.get("quantized_val_bpb")),
            ("artifact, sliding window stride 64", figures.get("pre_ttt_val_bpb")),
            ("artifact, sliding window + legal score-first TTT", figures.get("post_ttt_val_bpb"))]
    return "\n".join(["| stage | val_bpb |", "|---|---|", *(f"| {name} | {bpb(v)} |" for name, v in rows)])


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    result = run_cli(lambda: run(args))
    if isinstance(result, int):
        raise SystemExit(result)
    return result


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    out = Path(args.out)
    replace = ["--overwrite"] if args.overwrite or out == Path(DEFAULT_OUT) else []

    print("=== corpus: the embedded default corpus (CPython's own documentation text)", flush=True)
    manifest_path = default_root() / "manifest.json"
    stamp = manifest_path.stat().st_mtime_ns if manifest_path.is_file() else None
    data_dir = ensure_embedded_corpus()
    manifest = json.loads((data_dir / "manifest.json").read_text())
    cached = stamp is not None and (data_dir / "manifest.json").stat().st_mtime_ns == stamp
    print(json.dumps({"data_dir": str(data_dir), "cached": cached,
                      **{k: manifest[k] for k in manifest if k != "files"}}), flush=True)
    tokenizer = data_dir / "tokenizer.model"
    baseline = unigram_bpb(data_dir, tokenizer)
    print(f"unigram baseline (train unigram distribution scored on val): val_bpb {baseline:.4f}", flush=True)

    threads = ["--cpu-threads", str(args.cpu_threads)]
    train_argv = ["train", "--preset", "tiny", "--data", str(data_dir), "--out", str(out),
                  "--backend", args.backend, *threads, *replace]
    if args.steps:
        train_argv += ["--steps", str(args.steps)]
    trained = run_stage("train", train_argv)

    artifact = out / "model.tgz"
    quantized = run_stage("quantize", ["quant", str(out / "final_model.pt"), "--out", str(artifact),
                                       "--eval-data", str(data_dir), "--overwrite"])

    evaluated = run_stage("evaluate", ["eval", str(artifact), "--data", str(data_dir), "--ttt",
                                       "--ttt-chunk", str(args.ttt_chunk), "--ttt-epochs", str(args.ttt_epochs),
                                       "--ttt-lr", str(args.ttt_lr), "--backend", args.backend,
                                       "--log", str(out / "ttt_chunks.jsonl"), *threads])

    figures = {
        "event": "demo",
        "unigram_val_bpb": round(baseline, 4),
        "train_steps": trained.get("step"),
        "trained_val_bpb": trained.get("val_bpb"),
        "ema_val_bpb": quantized.get("float_val_bpb"),
        "artifact_bytes": quantized.get("artifact_bytes"),
        "total_bytes": quantized.get("total_bytes"),
        "under_cap": quantized.get("ok"),
        "quantized_val_bpb": quantized.get("quant_val_bpb"),
        "pre_ttt_val_bpb": evaluated.get("pre_ttt_val_bpb"),
        "post_ttt_val_bpb": evaluated.get("val_bpb"),
        "wall_s": round(time.perf_counter() - started, 1),
        "run_dir": str(out),
    }
    print("\n=== val_bpb by stage\n" + stage_table(figures), flush=True)
    print(json.dumps(figures, sort_keys=True), flush=True)
    if fail_on_nonfinite(figures):
        raise SystemExit(1)
    return figures


if __name__ == "__main__":
    main()

"""The main job (`make demo`): embedded corpus -> train `tiny` -> quantize -> sliding-window eval with legal TTT.

Each stage runs as the very command a user would type (`python -m train`, `python -m quant`, `python -m eval`),
so the demo also exercises the CLIs. It prints every stage's own output, then one final JSON line with the
figures: the unigram baseline, the trained model's val_bpb (live and EMA weights), the quantized one, the artifact size, and pre/post-TTT val_bpb.
On a GPU the same stages run there (the stages pick CUDA when present).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from eval.baseline import unigram_bpb
from train.data.embedded import ensure_embedded_corpus


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
    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--steps", type=int, help="training steps (default: the tiny preset's)")
    p.add_argument("--ttt-chunk", type=int, default=2048,
                   help="TTT chunk in tokens (the embedded val split is ~25K tokens; 32768 would be one chunk)")
    p.add_argument("--ttt-epochs", type=int, default=10)
    p.add_argument("--ttt-lr", type=float, default=0.002)
    p.add_argument("--backend", choices=("eager", "triton"), default="eager",
                   help="kernel backend (triton is slow on CPU: the kernels run in Triton's interpreter)")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="torch CPU threads per stage (1 is fastest for the tiny model on small machines)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print("=== corpus: the embedded default corpus (CPython's own documentation text)", flush=True)
    data_dir = ensure_embedded_corpus()
    manifest = json.loads((data_dir / "manifest.json").read_text())
    print(json.dumps({"data_dir": str(data_dir), **{k: manifest[k] for k in manifest if k != "files"}}), flush=True)
    tokenizer = data_dir / "tokenizer.model"
    baseline = unigram_bpb(data_dir, tokenizer)
    print(f"unigram baseline (train unigram distribution scored on val): val_bpb {baseline:.4f}", flush=True)

    threads = ["--cpu-threads", str(args.cpu_threads)]
    train_argv = ["train", "--preset", "tiny", "--data", str(data_dir), "--out", str(out),
                  "--backend", args.backend, *threads]
    if args.steps:
        train_argv += ["--steps", str(args.steps)]
    trained = run_stage("train", train_argv)

    artifact = out / "model.tgz"
    quantized = run_stage("quantize", ["quant", str(out / "final_model.pt"), "--out", str(artifact),
                                       "--eval-data", str(data_dir)])

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
    print(json.dumps(figures, sort_keys=True), flush=True)
    return figures


if __name__ == "__main__":
    main()

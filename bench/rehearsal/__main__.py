"""`python -m bench.rehearsal [--write bench/REHEARSAL.md] [--quick]`: the GPU path rehearsed on fake CUDA tensors.

Runs every stage of bench/rehearsal/stages.py at the seed preset for each CUDA kernel policy, projects step time
and peak memory (bench/rehearsal/projection.py), prints the report and exits 1 if any stage failed or the
default dQ mode is not the one the projection picks. Needs a CUDA build of torch, no GPU (`make rehearsal`).
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

REPORT_PATH = Path(__file__).resolve().parents[1] / "REHEARSAL.md"


def policies():
    from kernels.ops import default_kernels

    return [("CUDA default, compiled (training, evaluation, TTT)", *default_kernels("cuda", True)),
            ("CUDA default, not compiled (--no-compile)", *default_kernels("cuda", False)),
            ("eager twins (--backend eager)", "eager", "")]


class Runner:
    """Runs stages, keeping each one's result or its error as a row."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, float]] = []  # (stage, policy, result, seconds)

    def run(self, stage: str, policy: str, fn, summary=lambda r: "ok"):
        t0 = time.perf_counter()
        try:
            result = fn()
            self.rows.append((stage, policy, summary(result), time.perf_counter() - t0))
            return result
        except Exception as exc:  # a failing stage is a row of the report and a failing exit status
            last = traceback.extract_tb(exc.__traceback__)[-1]
            self.rows.append((stage, policy, f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:200]} "
                              f"({Path(last.filename).name}:{last.lineno})", time.perf_counter() - t0))
            return None

    @property
    def failed(self) -> bool:
        return any(r[2].startswith("FAIL") for r in self.rows)


def rehearse(preset: str, seqs: tuple[int, ...], ttt_seqs: int, capture_seqs: int) -> dict:
    from bench.rehearsal import stages
    from bench.rehearsal.projection import attention_q, peak_memory, step_costs
    from bench.rehearsal.roofline import GPUS, dq_mode_seconds, fastest_deterministic_dq_mode
    from kernels.attention import DEFAULT_DQ_MODE, DQ_MODES

    runner, out = Runner(), {"preset": preset, "seqs": seqs, "ttt_seqs": ttt_seqs, "policies": {}}
    for name, backend, kernels in policies():
        fwd = runner.run("forward: training, scored-positions head, TTT", name,
                         lambda: stages.forward_passes(preset, backend, kernels, seqs[0], ttt_seqs),
                         lambda r: f"ok: loss {r['loss_dtype']}, head {r['nll_dtype']}; Triton ops {r['custom_ops']}")
        if fwd is None:
            continue
        bwd = runner.run("backward formulas of every Triton op", name,
                         lambda: stages.backward_formulas(fwd["mode"], fwd["calls"]),
                         lambda r: f"ok: {sum(r['checked'].values())} calls of {len(r['checked'])} ops")
        out["policies"][name] = {"forward": fwd, "backward": bwd}
    first = next(iter(out["policies"].values()), None)
    if first is not None:
        opt = runner.run("optimizer step: clip, Muon (batched), AdamW (fused), EMA", "any",
                         lambda: stages.optimizer_steps(first["forward"]["mode"], first["forward"]["model"], preset),
                         lambda r: f"ok: {len(r['calls'])} ops")
        out["optimizer"] = opt
    name, backend, kernels = policies()[0]
    out["capture"] = runner.run("torch.compile(fullgraph=True) capture", name,
                                lambda: stages.compile_capture(preset, backend, kernels, capture_seqs),
                                lambda r: f"{r['graphs']} graph(s), {r['nodes']} nodes")
    for extra in seqs[1:]:
        out.setdefault("saved_at", {})[extra] = runner.run(
            f"forward at {extra} sequences (memory)", name,
            lambda: stages.forward_passes(preset, backend, kernels, extra, ttt_seqs)["saved_bytes"],
            lambda r: f"ok: {r / 1e9:.2f} GB saved")

    opt = out.get("optimizer")
    main = out["policies"].get(name)
    if opt:
        out["steps"] = {n: {m: step_costs(p["forward"]["calls"], p["backward"]["calls"], opt["calls"], m)
                            for m in DQ_MODES}
                        for n, p in out["policies"].items()
                        if p["backward"] and attention_q(p["forward"]["calls"]) is not None}
    if main and main["backward"] and opt:
        fwd, bwd = main["forward"], main["backward"]
        static = {"param_bytes": opt["param_bytes"], "grad_bytes": opt["param_bytes"],
                  "state_bytes": opt["state_bytes"], "ema_bytes": opt["ema_bytes"]}
        q = attention_q(fwd["calls"])
        saved = {seqs[0]: fwd["saved_bytes"], **{k: v for k, v in out.get("saved_at", {}).items() if v}}
        out["memory"] = {}
        for n, saved_bytes in saved.items():
            for m in DQ_MODES:
                mem = peak_memory(static, saved_bytes, bwd["calls"], q, m, scale=n / seqs[0])
                out["memory"][(n, m)] = mem
        params = fwd["model"].num_params()
        out["ttt_memory"] = params * 4 * 3 + fwd["ttt_saved_bytes"]  # parameters, gradients, SGD momentum
        if q is not None:
            out["dq"] = {gpu.name: dq_mode_seconds(tuple(q.shape), fwd["cfg"].num_kv_heads, gpu) for gpu in GPUS}
            picks = {fastest_deterministic_dq_mode(s) for s in out["dq"].values()}
            out["dq_pick"] = picks.pop() if len(picks) == 1 else None
            verdict = (f"ok: default {DEFAULT_DQ_MODE!r} is the projection's pick" if out["dq_pick"] == DEFAULT_DQ_MODE
                       else f"FAIL default {DEFAULT_DQ_MODE!r}, projection picks {out['dq_pick']!r}")
            runner.rows.append(("default dQ mode (roofline projection)", name, verdict, 0.0))
    out["rows"], out["failed"] = runner.rows, runner.failed
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, nargs="?", const=REPORT_PATH, default=None,
                        help=f"write the report (default {REPORT_PATH.name} beside bench/)")
    parser.add_argument("--quick", action="store_true", help="4 sequences instead of 48 and 64 (plumbing only)")
    args = parser.parse_args(argv)
    from bench.rehearsal.fake_cuda import can_fake_cuda
    from bench.rehearsal.report import render

    why = can_fake_cuda()
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    seqs, ttt_seqs = ((4,), 2) if args.quick else ((48, 64), 32)
    result = rehearse("seed", seqs, ttt_seqs, capture_seqs=2)
    text = render(result)
    print(text)
    if args.write is not None and not args.quick:
        from common.atomic import atomic_write
        atomic_write(args.write, [text.encode()])
        print(f"wrote {args.write}", file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""CLI: quantize a model file into an artifact, print the size table, and check the 16,000,000-byte cap.

    python -m quant MODEL_OR_CHECKPOINT --out ARTIFACT [--clip per-row|per-tensor]
        [--int6-storage int8|packed] [--compare-storage] [--eval-data DIR --tokenizer MODEL]

The last line printed is JSON (artifact, code and total bytes, headroom, cap, ok, timings, and the quant gap
when --eval-data is given). Exits 1 with a message when the total is over the cap or a figure is not finite.
Every input and the --out path are checked before any work: an existing --out (the model file itself included)
is refused unless --overwrite is given. The model file's provenance (tokenizer fingerprint, data identity) is
copied into the artifact's manifest. Errors are one line (common.cli_errors).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from quant.artifact import (DEFAULT_INT6_STORAGE, DEFAULT_LEVEL, INT6_STORAGES, code_body, compress_body,
                            decode_artifact, encode_body, stored_bytes, write_atomic)
from quant.schemes import CLIP_MODES, DEFAULT_CLIP, DEFAULT_SCALE_FLOOR, quantize_state_dict
from quant.bundle_cli import bundle_code
from quant.size import CAP_BYTES, code_bytes, format_size_table, size_rows, size_summary
from common.cli_errors import (ArgumentParser, check_input_file, check_output_file, fail_on_nonfinite, int_in,
                              positive_float, positive_int, run_cli)


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m quant", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_file", help='a file holding {"config": ..., "model": state_dict} (model or checkpoint)')
    ap.add_argument("--out", required=True, help="artifact path to write (atomically)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists (even the model file)")
    ap.add_argument("--clip", choices=CLIP_MODES, default=DEFAULT_CLIP,
                    help="int6 clip search: best of 15 percentiles per row (default) or the seed's per-tensor 5")
    ap.add_argument("--int6-storage", choices=INT6_STORAGES, default=DEFAULT_INT6_STORAGE,
                    help="int6 values one per byte (int8) or bit-packed 4-in-3 bytes (packed)")
    ap.add_argument("--compare-storage", action="store_true",
                    help="also compress with the other int6 storage and report both sizes")
    ap.add_argument("--scale-floor", type=positive_float, default=DEFAULT_SCALE_FLOOR,
                    help="minimum int6 row scale (seed: 1/31)")
    ap.add_argument("--level", type=int_in(1, 22), default=DEFAULT_LEVEL,
                    help="zstd level of the segments zstd codes (22 for a real artifact)")
    ap.add_argument("--no-bounds", action="store_true",
                    help="skip the entropy-bound table (order-0 bounds, zstd-22 per tensor, seed-style bytes)")
    ap.add_argument("--code-files", nargs="+", help="count these files as the code bytes (default: the train_gpt.py "
                    "`python -m quant bundle` writes for the model's preset)")
    ap.add_argument("--cap", type=positive_int, default=CAP_BYTES, help="size cap in bytes (decimal)")
    ap.add_argument("--eval-data", help="data dir with val shards: also report the float vs artifact quant gap")
    ap.add_argument("--tokenizer", help="SentencePiece model for --eval-data (default: DIR/tokenizer.model)")
    ap.add_argument("--eval-tokens", type=positive_int, help="limit the quant-gap evaluation to this many val tokens")
    return ap.parse_args(argv)


def int6_report(qtensors) -> str:
    """Floor-firing fraction and clip choices over all int6 matrices (seed-spec §8.4 asks to log the floor)."""
    int6 = [qt for qt in qtensors if qt.scheme == "int6_per_row"]
    if not int6:
        return "int6: no int6 matrices"
    rows = sum(qt.shape[0] for qt in int6)
    floored = sum(qt.stats["floor_fraction"] * qt.shape[0] for qt in int6)
    counts: dict[str, int] = {}
    for qt in int6:
        for p, c in qt.stats["percentile_counts"].items():
            counts[p] = counts.get(p, 0) + c
    choice = " ".join(f"{p}:{c}" for p, c in sorted(counts.items(), key=lambda kv: float(kv[0])))
    return (f"int6: {len(int6)} matrices, {rows} rows, scale floor fires on {floored / rows:.1%} of rows; "
            f"clip choices (rows) {choice}")


def bounds_report(qtensors, order, body, segments, artifact_bytes, args, config, provenance) -> dict:
    """Print the entropy-bound table (quant.bounds) and return its figures for the JSON line."""
    from quant.bounds import artifact_bound, bound_rows, coded_by_tensor, format_bounds_table, seed_style_bytes

    coded = coded_by_tensor(body, segments)
    rows = bound_rows(qtensors, coded, args.int6_storage)
    seed_style = seed_style_bytes(qtensors, order)
    print(format_bounds_table(rows, coded, artifact_bytes, seed_style))
    bound = artifact_bound(rows, coded)
    format2, format3 = (len(compress_body(encode_body(qtensors, config, args.int6_storage, provenance,
                                                      format_version=v), args.level, format_version=v))
                        for v in (2, 3))
    print(f"the same tensors as format 2 (zstd frames): {format2:,} B; as format 3 (order-0 segments, no width "
          f"contexts): {format3:,} B")
    return {"bound_bytes": round(bound), "row_bound_bytes": round(sum(r.row_bound for r in rows)),
            "seed_style_bytes": seed_style, "artifact_over_bound": round(artifact_bytes / bound, 4),
            "artifact_over_seed_style": round(artifact_bytes / seed_style, 4), "format2_bytes": format2,
            "format3_bytes": format3}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "submit":  # `python -m quant submit RUN... --out records/...`: quant.submit
        from quant.submit import main as submit_main
        return submit_main(argv[1:])
    if argv and argv[0] == "bundle":  # `python -m quant bundle --out train_gpt.py`: quant.bundle_cli
        from quant.bundle_cli import main as bundle_main
        return bundle_main(argv[1:])
    args = parse_args(argv)
    return run_cli(lambda: run(args))


def check_inputs(args: argparse.Namespace) -> str | None:
    """Every path the run reads or writes, checked before any work; returns the tokenizer for --eval-data."""
    check_input_file(args.model_file, "model file")
    check_output_file(args.out, overwrite=args.overwrite, inputs=[args.model_file])
    for path in args.code_files or ():
        check_input_file(path, "--code-files entry")
    if not args.eval_data:
        return None
    from common.shards import list_shards

    list_shards(args.eval_data, "val")
    return str(check_input_file(args.tokenizer or Path(args.eval_data) / "tokenizer.model", "tokenizer"))


def run(args: argparse.Namespace) -> int:
    """Quantize, write, report; returns the exit status."""
    from common.checkpoint import read_model_file

    tokenizer = check_inputs(args)
    source = read_model_file(args.model_file)
    config, state = source.config, source.state
    if tokenizer:  # the quant gap builds the model and scores it: check what it needs first
        from model.validate import check_model_tensors
        from common.provenance import check_tokenizer

        check_model_tensors(config, {k: tuple(v.shape) for k, v in state.items()}, args.model_file)
        check_tokenizer(source.provenance, tokenizer, args.model_file)
    t0 = time.perf_counter()
    qtensors = quantize_state_dict(state, clip=args.clip, scale_floor=args.scale_floor)
    t_quant = time.perf_counter() - t0
    t0 = time.perf_counter()
    body = encode_body(qtensors, config, args.int6_storage, provenance=source.provenance)
    data, segments = code_body(body, args.level)
    t_compress = time.perf_counter() - t0
    write_atomic(args.out, data)
    t0 = time.perf_counter()
    decode_artifact(data, where=str(args.out))
    t_decode = time.perf_counter() - t0

    if args.code_files:
        code, code_what = code_bytes(args.code_files), f"{len(args.code_files)} files: " + " ".join(args.code_files)
    else:
        code, code_what = bundle_code(config)
    summary = size_summary(len(data), code, args.cap)
    stored = {qt.name: stored_bytes(qt, args.int6_storage) for qt in qtensors}
    print(format_size_table(size_rows(qtensors, stored, len(data)), summary, code_what))
    print(int6_report(qtensors))
    result = dict(summary, artifact=str(args.out), clip=args.clip, int6_storage=args.int6_storage,
                  zstd_level=args.level, quantize_s=round(t_quant, 2), compress_s=round(t_compress, 2),
                  decode_s=round(t_decode, 2))
    if not args.no_bounds:
        result.update(bounds_report(qtensors, list(state), body, segments, len(data), args, config,
                                    source.provenance))
    if args.compare_storage:
        sizes = {args.int6_storage: len(data)}
        for other in INT6_STORAGES:
            if other != args.int6_storage:
                sizes[other] = len(compress_body(encode_body(qtensors, config, other), args.level))
        print("artifact bytes by int6 storage: " + "  ".join(f"{k}={v:,}" for k, v in sorted(sizes.items())))
        result["artifact_bytes_by_int6_storage"] = sizes
    if args.eval_data:
        from quant.roundtrip import format_quant_gap, quant_gap
        gap = quant_gap(args.model_file, args.out, args.eval_data, tokenizer, max_tokens=args.eval_tokens)
        print(format_quant_gap(gap))
        result.update(gap)
    print(json.dumps(result, sort_keys=True))
    if fail_on_nonfinite(result):
        return 1
    if not summary["ok"]:
        print(f"error: {summary['total_bytes']:,} bytes (artifact {summary['artifact_bytes']:,} + code "
              f"{summary['code_bytes']:,}) is over the {summary['cap_bytes']:,}-byte cap by "
              f"{-summary['headroom_bytes']:,}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m quant submit RUN_DIR --out records/<track>/<date>_<Name> --name NAME --github-id ID`: a Parameter Golf
records folder from a finished run.

The folder holds what the challenge asks of a submission:
  train_gpt.py          this package's train -> quantize -> evaluate code as one standalone file (quant.bundle),
                        defaults = the run's configs; its bytes are the submission's code bytes
  final_model.int6.ptz  the run's artifact
  README.md             what was run, hardware, results (pre/post-quant, sliding, TTT), timings, byte budget
  submission.json       name, GitHub id, val_bpb and related figures
  requirements.txt      the third-party packages train_gpt.py imports
  train_*.log           challenge-format train logs: the bundle's own (RUN/logs/*.txt), else rendered from
                        metrics.jsonl; plus the run's metrics.jsonl, eval/quant JSON, TTT chunk log, *.log, --log files
Code bytes + artifact bytes are checked against 16,000,000 and the headroom printed; over the cap, nothing is
written (exit 1). An existing folder is refused unless --overwrite. The folder is built beside its destination
and renamed into place, so a failure never leaves half a folder. Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from quant.bundle import build_bundle
from quant.records_readme import render_readme, render_train_log, submission_json, today
from quant.run_figures import RunFigures, SubmitError, gather
from quant.size import CAP_BYTES
from common.cli_errors import ArgumentParser, positive_int, run_cli

COPIED_RUN_FILES = ("metrics.jsonl", "eval.json", "quant.json", "quant.log", "ttt_chunks.jsonl", "run_info.json")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m quant submit", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="finished run folder (checkpoint.pt, metrics.jsonl, artifact, eval.json)")
    p.add_argument("--out", required=True,
                   help="records folder to create, e.g. records/track_10min_16mb/<date>_<Name>")
    p.add_argument("--name", required=True, help="submission name (README title, submission.json)")
    p.add_argument("--github-id", required=True, help="your GitHub id")
    p.add_argument("--author", help="author name (default: the GitHub id)")
    p.add_argument("--blurb", default="", help="one-paragraph summary")
    p.add_argument("--track", default="non_record_16mb", help="submission.json track (default non_record_16mb)")
    p.add_argument("--hardware", help="e.g. '8xH100 SXM' (default: the run's run_info.json, if any)")
    p.add_argument("--date", help="submission date, ISO 8601 (default: today, UTC)")
    p.add_argument("--artifact", help="the artifact (default RUN/model.tgz or RUN/final_model.int6.ptz)")
    p.add_argument("--eval-json", help="`python -m eval --json` summary (default RUN/eval.json)")
    p.add_argument("--quant-json", help="`python -m quant --eval-data` output, JSON or log (default RUN/quant.json)")
    p.add_argument("--log", action="append", default=[], help="extra log to include (repeatable: other seeds)")
    p.add_argument("--plain", action="store_true",
                   help="store the modules in train_gpt.py as readable text instead of lzma+base85 (more bytes)")
    p.add_argument("--cap", type=positive_int, default=CAP_BYTES, help="size cap in bytes (decimal)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


def folder_files(run: RunFigures, bundle, defaults: dict, args, meta: dict) -> dict[str, bytes | Path]:
    """{file name: bytes to write, or a file to copy} for the records folder."""
    files: dict[str, bytes | Path] = {"train_gpt.py": bundle.text.encode("utf-8"),
                                      "final_model.int6.ptz": run.artifact}
    seed = run.train_config.get("seed")
    if run.logs:
        files.update({f"train_{log.stem}.log": log for log in run.logs})
    else:
        files[f"train_seed{seed}.log"] = render_train_log(run, bundle.code_bytes).encode("utf-8")
    files.update({name: run.run_dir / name for name in COPIED_RUN_FILES if (run.run_dir / name).is_file()})
    files.update({p.name: p for p in sorted(run.run_dir.glob("*.log"))})
    for extra in map(Path, args.log):
        if not extra.is_file():
            raise FileNotFoundError(f"--log file not found: {extra}")
        if extra.name in files:
            raise SubmitError(f"--log {extra}: the folder already has a file named {extra.name}")
        files[extra.name] = extra
    files["requirements.txt"] = ("".join(f"{dist}  # {version} when this folder was written\n"
                                         for dist, version in bundle.requirements.items())).encode("utf-8")
    files["submission.json"] = (json.dumps(submission_json(run, meta, bundle.code_bytes), indent=2) + "\n").encode()
    names = sorted([*files, "README.md"])
    files["README.md"] = render_readme(run, meta, defaults, bundle.code_bytes, names, len(bundle.modules)).encode()
    return files


def write_folder(out: Path, files: dict[str, bytes | Path], overwrite: bool) -> None:
    """Build the folder beside `out`, then rename it into place (replacing `out` only with `overwrite`)."""
    if out.exists() and not overwrite:
        raise SubmitError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        tmp.mkdir()
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, tmp / name)
            else:
                (tmp / name).write_bytes(content)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def submit(args: argparse.Namespace) -> dict:
    run = gather(args.run_dir, artifact=args.artifact, eval_json=args.eval_json, quant_json=args.quant_json)
    what, val_loss, val_bpb = run.score()
    defaults = {"train": run.train_config, "model": run.model_config, "eval": run.eval_settings()}
    bundle = build_bundle(defaults, compress=not args.plain)
    total = bundle.code_bytes + run.artifact_bytes
    verdict = {"code_bytes": bundle.code_bytes, "artifact_bytes": run.artifact_bytes, "total_bytes": total,
               "cap_bytes": args.cap, "headroom_bytes": args.cap - total, "ok": total <= args.cap}
    print(f"train_gpt.py: {len(bundle.modules)} modules, {bundle.source_bytes:,} source bytes -> "
          f"{bundle.stripped_bytes:,} stripped -> {bundle.code_bytes:,} bytes in the file"
          f"{'' if args.plain else ' (lzma + base85)'}")
    print(f"total: code {bundle.code_bytes:,} + artifact {run.artifact_bytes:,} = {total:,} bytes; "
          f"cap {args.cap:,}; headroom {args.cap - total:,}")
    if not verdict["ok"]:
        raise SubmitError(f"{total:,} bytes is over the {args.cap:,}-byte cap by {total - args.cap:,}; "
                          "nothing written")
    out = Path(args.out)
    meta = {"name": args.name, "github_id": args.github_id, "author": args.author or args.github_id,
            "blurb": args.blurb, "track": args.track, "date": args.date or today(),
            "hardware": args.hardware or run.hardware or "not recorded (pass --hardware)", "folder": out.as_posix()}
    files = folder_files(run, bundle, defaults, args, meta)
    write_folder(out, files, args.overwrite)
    for name in sorted(files):
        print(f"  {out / name}  {(out / name).stat().st_size:,} B")
    return dict(verdict, out=str(out), files=sorted(files), score=what, val_loss=val_loss, val_bpb=val_bpb,
                modules=len(bundle.modules), stripped_bytes=bundle.stripped_bytes, source_bytes=bundle.source_bytes)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        print(json.dumps(submit(args), sort_keys=True))
        return 0

    return run_cli(job)  # bad input, a refused folder or an over-cap total: one `error:` line, exit 1


if __name__ == "__main__":
    sys.exit(main())

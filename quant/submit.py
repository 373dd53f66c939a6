"""`python -m quant submit RUN [RUN ...] --out records/<track>/<date>_<Name> --name NAME --github-id ID`: a
Parameter Golf records folder from finished runs, one per seed.

The honest path: `python -m quant bundle --out train_gpt.py`, run that script once per seed (its outputs go to
runs/seed<S>), then submit those run folders. The folder then ships the very script that ran and the logs it
wrote, untouched; hardware, library versions, world size and times come from the runs' own records
(`--hardware` only adds a note; a mismatch is a warning in the README). Package runs (`python -m train`, then
`python -m quant` and `python -m eval --json RUN/eval.json`) are accepted too, with their logs rendered
afterwards and the folder marked as not within the 10-minute track.

The runs must be seeds of one submission: the same script (sha256) and configuration but for the seed,
else nothing is written. The README and submission.json give each seed's results, their mean and standard
deviation and, with --baseline-val-loss (the current record's val_loss), the challenge's one-sided t-test of
a 0.005-nat improvement at p < 0.01; a compliance section checks training and evaluation time against 600 s
each, the byte cap, score-first TTT, the logs' origin, the recorded hardware and the seed count. The track is
the 10-minute one only when all of that holds (`--track 10min_16mb` is refused otherwise). Code + artifact over
the cap for any seed, or an existing --out without --overwrite: nothing is written (exit 1). Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quant.bundle import read_bundle
from quant.records_checks import check_runs, compliance, hardware_warnings, record_eligible
from quant.records_folder import (check_code_figure, code_identity, folder_requirements, run_files, shipped_code,
                                  twin_file, write_folder)
from quant.records_json import submission_json
from quant.records_readme import Submission, render_readme, today
from quant.run_figures import SubmitError, gather
from quant.seed_stats import seed_stats
from quant.size import CAP_BYTES
from common.cli_errors import ArgumentParser, finite_float, positive_int, run_cli

TRACKS = ("auto", "10min_16mb", "non_record_16mb")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m quant submit", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="finished run folders, one per seed: train_gpt.py runs (runs/<RUN_ID>) or package runs")
    p.add_argument("--out", required=True,
                   help="records folder to create, e.g. records/track_10min_16mb/<date>_<Name>")
    p.add_argument("--name", required=True, help="submission name (README title, submission.json)")
    p.add_argument("--github-id", required=True, help="your GitHub id")
    p.add_argument("--author", help="author name (default: the GitHub id)")
    p.add_argument("--blurb", default="", help="one-paragraph summary")
    p.add_argument("--track", choices=TRACKS, default="auto",
                   help="auto (default): the 10-minute track when every rule holds, else non-record")
    p.add_argument("--baseline-val-loss", type=finite_float,
                   help="the current record's val_loss (nats), for the significance test of a record claim")
    p.add_argument("--hardware", help="a note on the hardware (checked against what the runs recorded)")
    p.add_argument("--date", help="submission date, ISO 8601 (default: today, UTC)")
    p.add_argument("--artifact", help="one package run: the artifact (default RUN/model.tgz or "
                                      "RUN/final_model.int6.ptz)")
    p.add_argument("--eval-json", help="one package run: `python -m eval --json` summary (default RUN/eval.json)")
    p.add_argument("--quant-json", help="one package run: `python -m quant --eval-data` output, JSON or log")
    p.add_argument("--plain", action="store_true",
                   help="package runs: store train_gpt.py's modules as readable text instead of lzma+base85")
    p.add_argument("--cap", type=positive_int, default=CAP_BYTES, help="size cap in bytes (decimal)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


def choose_track(requested: str, checks) -> str:
    eligible = record_eligible(checks)
    if requested == "10min_16mb" and not eligible:
        failed = [c.rule for c in checks if c.ok is not True and c.key != "score_first_ttt"]
        raise SubmitError(f"not within the 10-minute track: {'; '.join(failed)} (see the compliance checks; "
                          "use --track non_record_16mb or auto)")
    return requested if requested != "auto" else "10min_16mb" if eligible else "non_record_16mb"


def submit(args: argparse.Namespace) -> dict:
    if len(args.runs) > 1 and (args.artifact or args.eval_json or args.quant_json):
        raise SubmitError("--artifact, --eval-json and --quant-json name one run's files: give one RUN with them")
    runs = [gather(r, artifact=args.artifact, eval_json=args.eval_json, quant_json=args.quant_json)
            for r in args.runs]
    check_runs(runs)
    text, _ = shipped_code(runs, args.plain)
    code = code_identity(text, runs[0].by_script)
    totals = {run.seed: code["bytes"] + run.artifact_bytes for run in runs}
    print(f"train_gpt.py: {code['modules']} modules, {code['bytes']:,} bytes"
          f"{' (lzma + base85)' if code['compressed'] else ''}, "
          f"{'the file the runs ran' if code['by_script'] else 'bundled now from the first run configuration'}")
    for seed, total in totals.items():
        print(f"seed {seed}: code {code['bytes']:,} + artifact {total - code['bytes']:,} = {total:,} bytes; "
              f"cap {args.cap:,}; headroom {args.cap - total:,}")
    over = {seed: total for seed, total in totals.items() if total > args.cap}
    if over:
        raise SubmitError(f"over the {args.cap:,}-byte cap: " + ", ".join(
            f"seed {seed} {total:,} bytes (by {total - args.cap:,})" for seed, total in over.items())
            + "; nothing written")
    scores = [run.score() for run in runs]
    if any(loss is None for _, loss, _ in scores):
        raise SubmitError("a run's evaluation recorded no val_loss (the significance test is in nats)")
    stats = seed_stats([loss for _, loss, _ in scores], [bpb for _, _, bpb in scores], args.baseline_val_loss)
    checks = compliance(runs, code["bytes"], args.cap, stats)
    out = Path(args.out)
    meta = {"name": args.name, "github_id": args.github_id, "author": args.author or args.github_id,
            "blurb": args.blurb, "track": choose_track(args.track, checks), "date": args.date or today(),
            "hardware_note": args.hardware, "folder": out.as_posix()}
    requirements, extra = folder_requirements(text, runs)
    sub = Submission(runs, meta, code, read_bundle(text).defaults, stats, checks,
                     hardware_warnings(runs, args.hardware), extra)
    files: dict = {"train_gpt.py": text.encode("utf-8"), **twin_file(text, code["compressed"]),
                   "requirements.txt": requirements.encode("utf-8")}
    for run in runs:
        files.update(run_files(run, code["bytes"]))
    submission = submission_json(runs, meta, code, stats, checks)
    files["submission.json"] = (json.dumps(submission, indent=2) + "\n").encode("utf-8")
    files["README.md"] = render_readme(sub, sorted([*files, "README.md"])).encode("utf-8")
    check_code_figure(files, code["bytes"], submission)
    write_folder(out, files, args.overwrite)
    for warning in sub.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for name in sorted(files):
        print(f"  {out / name}  {(out / name).stat().st_size:,} B")
    return {"out": str(out), "files": sorted(files), "track": meta["track"], "code_bytes": code["bytes"],
            "code_sha256": code["sha256"], "by_script": code["by_script"], "seeds": [run.seed for run in runs],
            "totals": {str(k): v for k, v in totals.items()}, "cap_bytes": args.cap,
            "val_bpb_mean": stats.val_bpb_mean, "val_bpb_std": stats.val_bpb_std,
            "val_loss_mean": stats.val_loss_mean, "p_value": stats.p_value,
            "compliance": {c.key: c.ok for c in checks}, "warnings": sub.warnings}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        print(json.dumps(submit(args), sort_keys=True))
        return 0

    return run_cli(job)  # bad input, refused runs or folder, an over-cap total: one `error:` line, exit 1


if __name__ == "__main__":
    sys.exit(main())

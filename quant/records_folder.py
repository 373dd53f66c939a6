"""The files of a records folder, and writing them all or nothing.

    train_gpt.py              the counted code: the very file the runs ran (train_gpt.py runs), or the package
                              bundled with the first run's configuration as defaults (package runs)
    train_gpt_plain.py        its readable twin (when train_gpt.py is compressed); not counted
    train_seed<S>.log         each run's challenge log: the one train_gpt.py wrote, copied untouched (package
                              runs: rendered from metrics.jsonl, and marked so)
    seed<S>/                  each run's artifact and records: final_model.int6.ptz, metrics.jsonl, eval.json,
                              quant.json, run_info.json, ttt_chunks.jsonl
    README.md, submission.json, requirements.txt
The folder is built beside its destination and renamed into place, so a failure never leaves half a folder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from quant.bundle import (CHALLENGE_REQUIREMENTS, Bundle, BundleError, build_bundle, installed_requirements,
                          plain_twin, read_bundle, requirements_text, third_party_imports)
from quant.records_log import render_train_log
from quant.records_readme import TWIN_NAME
from quant.run_figures import CODE_SIZE_LINE, RunFigures, SubmitError

RUN_FILES = ("metrics.jsonl", "eval.json", "quant.json", "run_info.json", "ttt_chunks.jsonl")
ARTIFACT_IN_FOLDER = "final_model.int6.ptz"


def shipped_code(runs: list[RunFigures], plain: bool) -> tuple[str, Bundle | None]:
    """(train_gpt.py text, the Bundle when one was built here)."""
    if runs[0].by_script:
        if plain:
            raise SubmitError("--plain applies to package runs: these runs ran a train_gpt.py, which the folder "
                              "ships as it ran (its readable twin comes with it)")
        text = runs[0].script.read_text(encoding="utf-8")
        try:
            read_bundle(text)
        except BundleError as e:
            raise SubmitError(f"{runs[0].script}: {e}") from None
        return text, None
    run = runs[0]
    bundle = build_bundle({"train": run.train_config, "model": run.model_config, "eval": run.eval_settings()},
                          compress=not plain)
    return bundle.text, bundle


def code_identity(text: str, by_script: bool) -> dict:
    data = text.encode("utf-8")
    parts = read_bundle(text)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "by_script": by_script,
            "compressed": parts.compressed, "modules": len(parts.sources)}


def folder_requirements(text: str, runs: list[RunFigures]) -> tuple[str, list[str]]:
    """(requirements.txt, the distributions the challenge's requirements.txt lacks): the third-party packages
    the script imports, at the versions the runs recorded (torch, triton) or else those installed here."""
    versions = {dist: f"{version} installed where this folder was written" for dist, version in
                installed_requirements(third_party_imports(read_bundle(text).sources)).items()}
    for dist in ("torch", "triton"):
        recorded = {run.recorded(dist) for run in runs} - {None}
        if dist in versions and len(recorded) == 1:
            versions[dist] = f"{recorded.pop()} in the runs (run_info.json)"
    return requirements_text(versions), [d for d in versions if d not in CHALLENGE_REQUIREMENTS]


def run_files(run: RunFigures, code_bytes: int) -> dict[str, bytes | Path]:
    """One run's files in the folder: its log and, under seed<S>/, its artifact and records."""
    seed = run.seed
    files: dict[str, bytes | Path] = {
        f"train_seed{seed}.log": run.log if run.by_script else render_train_log(run, code_bytes).encode("utf-8"),
        f"seed{seed}/{ARTIFACT_IN_FOLDER}": run.artifact}
    files.update({f"seed{seed}/{name}": run.run_dir / name for name in RUN_FILES if (run.run_dir / name).is_file()})
    return files


def check_code_figure(files: dict[str, bytes | Path], code_bytes: int, submission: dict) -> None:
    """The one code figure: every log's `Code size` line and submission.json agree with train_gpt.py's bytes."""
    for name, content in files.items():
        if name.startswith("train_seed") and name.endswith(".log"):
            text = content.read_text(encoding="utf-8") if isinstance(content, Path) else content.decode("utf-8")
            if {int(n) for n in CODE_SIZE_LINE.findall(text)} != {code_bytes}:
                raise SubmitError(f"{name}: its Code size line does not say {code_bytes}")
    if submission["bytes_code"] != code_bytes:
        raise SubmitError(f"submission.json's bytes_code {submission['bytes_code']} is not {code_bytes}")


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
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
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


def twin_file(text: str, compressed: bool) -> dict[str, bytes]:
    return {TWIN_NAME: plain_twin(text).encode("utf-8")} if compressed else {}


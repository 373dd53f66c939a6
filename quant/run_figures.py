"""A finished run's figures, gathered from the files the package's commands leave in its folder.

Two kinds of run folder:
  - a train_gpt.py run (the honest path to a records folder: `python -m quant bundle`, then the script):
        logs/<RUN_ID>.txt    the challenge log the script wrote as it ran (shipped untouched)
        run_info.json        machine, library versions, world size, settings, variables read, timings, and the
                             byte count and sha256 of the script that ran
        train_gpt.py         the copy of that script (checked against run_info.json)
  - a package run (`python -m train`, `python -m quant`, `python -m eval --json`): no record of the machine or
    of the code; its challenge log can only be rendered afterwards from metrics.jsonl.
Both hold:
    checkpoint.pt        train + model configs (written at the last step)
    metrics.jsonl        training: losses, val, EMA val, train time
    the artifact         model.tgz / final_model.int6.ptz
    eval.json            the artifact's score: sliding window, TTT
    quant.json|quant.log optional: the non-sliding round-trip score (python -m quant --eval-data's JSON line)

Nothing here evaluates anything: every figure is one a command measured and wrote down, and one that was not
measured stays None.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

ARTIFACT_NAMES = ("model.tgz", "final_model.int6.ptz")
SCRIPT_NAME = "train_gpt.py"
CODE_SIZE_LINE = re.compile(r"^Code size: (\d+) bytes", re.MULTILINE)


class SubmitError(ValueError):
    """A run folder that cannot be turned into a records folder (missing or inconsistent files)."""


@dataclass
class RunFigures:
    run_dir: Path
    train_config: dict
    model_config: dict
    params: int
    artifact: Path
    records: list[dict]                     # metrics.jsonl
    eval: dict | None = None                # eval.json
    quant: dict | None = None               # quant CLI JSON line / the bundle's quant.json
    info: dict | None = None                # run_info.json of a train_gpt.py run
    log: Path | None = None                 # the challenge log train_gpt.py wrote (logs/<RUN_ID>.txt)

    @property
    def by_script(self) -> bool:
        """Made by a train_gpt.py (its own log and records), not by the package's commands."""
        return self.info is not None

    @property
    def seed(self) -> int:
        return int(self.train_config.get("seed"))

    @property
    def script(self) -> Path | None:
        return self.run_dir / SCRIPT_NAME if self.by_script else None

    @property
    def code(self) -> dict | None:
        return self.info.get("code") if self.info else None

    def recorded(self, key: str):
        """A figure of run_info.json (hardware, world_size, torch, triton, cuda, ...); None when not recorded."""
        return (self.info or {}).get(key)

    @property
    def hardware(self) -> str | None:
        return self.recorded("hardware")

    @property
    def steps(self) -> int:
        return max((int(r["step"]) for r in self.records if _num(r.get("train_loss"))), default=0)

    def last(self, key: str) -> dict | None:
        """The last record holding a number under `key`."""
        return next((r for r in reversed(self.records) if _num(r.get(key))), None)

    @property
    def train_time_s(self) -> float | None:
        record = self.last("train_time_ms")
        return record["train_time_ms"] / 1000.0 if record else None

    @property
    def artifact_bytes(self) -> int:
        return self.artifact.stat().st_size

    @property
    def ttt_chunks(self) -> int | None:
        """TTT chunks of the final evaluation (1: the last chunk is never trained on, so no adaptation ran)."""
        ttt = (self.eval or {}).get("ttt")
        return int(ttt["chunks"]) if isinstance(ttt, dict) and "chunks" in ttt else None

    def eval_timing(self) -> tuple[float | None, str]:
        """(seconds, what they cover) of the evaluation: a train_gpt.py run times its whole evaluation (the
        artifact's re-read, round trip, sliding window and TTT); for a package run only eval.json's scoring
        and TTT seconds are known."""
        timings = (self.info or {}).get("timings") or {}
        if _num(timings.get("eval_s")):
            return timings["eval_s"], "re-read + round trip + sliding window + TTT, wall clock of train_gpt.py"
        if self.eval is None:
            return None, "not measured"
        ttt = self.eval.get("ttt") or {}
        parts = [self.eval.get("sliding_seconds"), ttt.get("score_seconds"), ttt.get("train_seconds")]
        if not any(_num(p) for p in parts):
            return None, "not measured"
        return sum(p for p in parts if _num(p)), "sliding window + TTT scoring and training, python -m eval's timers"

    def score(self) -> tuple[str, float | None, float]:
        """(what, val_loss, val_bpb) of the submission's score: the artifact's final eval."""
        if self.eval is not None:
            what = "legal score-first TTT" if "post_ttt_val_bpb" in self.eval else "sliding window"
            return what, self.eval.get("val_loss"), self.eval["val_bpb"]
        if self.quant is not None and _num(self.quant.get("quant_val_bpb")):
            return "int6 round trip", self.quant.get("quant_val_loss"), self.quant["quant_val_bpb"]
        raise SubmitError(f"{self.run_dir}: no evaluation of the artifact (eval.json from `python -m eval "
                          f"ARTIFACT --data DIR --json {self.run_dir}/eval.json`, or quant.json)")

    def eval_settings(self) -> dict:
        """The final evaluation's settings as train.challenge_env.EvalSettings fields: a train_gpt.py run's own
        record, else rebuilt from eval.json (the bundle's defaults for a package run)."""
        from train.challenge_env import EvalSettings

        if self.info is not None:
            return dict(self.info["settings"]["eval"])
        settings = EvalSettings()
        if self.eval is None:
            return dataclasses.asdict(settings)
        window = int(self.eval.get("window", 0))
        updates = {"stride": int(self.eval.get("stride", settings.stride)),
                   "window": 0 if window == self.model_config.get("seq_len") else window,
                   "ttt": "post_ttt_val_bpb" in self.eval, "seed_quirk": bool(self.eval.get("seed_quirk", False))}
        ttt_summary = self.eval.get("ttt") or {}
        ttt = ttt_summary.get("ttt")
        if updates["ttt"] and ttt:
            # fake-quant decided by the model's record ("auto") stays so; a flag's choice is kept as it was
            qat = "auto" if ttt_summary.get("qat_from") in ("model file", "not recorded") else ttt["qat"]
            updates.update(ttt_chunk=ttt["chunk_tokens"], ttt_epochs=ttt["epochs"], ttt_lr=ttt["lr"],
                           ttt_momentum=ttt["momentum"], ttt_freeze=ttt["freeze_blocks"],
                           ttt_clip=ttt["grad_clip"], ttt_warmup=ttt["warmup_frac"],
                           ttt_batch_seqs=ttt["batch_seqs"], ttt_qat=qat)
        return dataclasses.asdict(dataclasses.replace(settings, **updates))

    def settings(self) -> dict:
        """{"train", "model", "eval"}: the configuration the run trained and evaluated with."""
        if self.info is not None:
            return self.info["settings"]
        return {"train": self.train_config, "model": self.model_config, "eval": self.eval_settings()}


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_json_file(path: Path) -> dict:
    """A JSON object file, or the last line starting with "{" of a log (the CLIs end with a JSON line)."""
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.startswith("{")]
        if not lines:
            raise SubmitError(f"{path}: neither JSON nor a log ending with a JSON line") from None
        try:
            obj = json.loads(lines[-1])
        except json.JSONDecodeError as e:
            raise SubmitError(f"{path}: its last JSON line does not parse ({e})") from None
    if not isinstance(obj, dict):
        raise SubmitError(f"{path}: expected a JSON object")
    return obj


def _first_existing(run_dir: Path, names) -> Path | None:
    return next((run_dir / n for n in names if (run_dir / n).is_file()), None)


def count_params(model_config: dict) -> int:
    from model.config import ModelConfig
    from model.gpt import GPT
    return GPT(ModelConfig.from_dict(model_config)).num_params()


def gather(run_dir, *, artifact=None, eval_json=None, quant_json=None) -> RunFigures:
    """Read a finished run's folder (paths given explicitly override the default names)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise SubmitError(f"{run_dir}: no checkpoint.pt (the run's configs); is it a `python -m train` run folder?")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        train_config, model_config = dict(ckpt["train_config"]), dict(ckpt["config"])
    except Exception as e:  # torch raises several types for foreign files
        raise SubmitError(f"{ckpt_path}: not a training checkpoint ({type(e).__name__}: {e})") from None
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SubmitError(f"{run_dir}: no metrics.jsonl (the training log)")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    artifact = Path(artifact) if artifact else _first_existing(run_dir, ARTIFACT_NAMES)
    if artifact is None or not artifact.is_file():
        raise SubmitError(f"{run_dir}: no artifact ({' or '.join(ARTIFACT_NAMES)}; or pass --artifact)")
    from quant.artifact import MAGIC
    with open(artifact, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise SubmitError(f"{artifact}: not a quant.artifact file (run `python -m quant` on the model first)")
    eval_path = Path(eval_json) if eval_json else _first_existing(run_dir, ("eval.json",))
    quant_path = Path(quant_json) if quant_json else _first_existing(run_dir, ("quant.json", "quant.log"))
    for path in (eval_path, quant_path):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"not found: {path}")
    evaluated = read_json_file(eval_path) if eval_path else None
    if evaluated is not None and evaluated.get("kind") != "artifact":
        raise SubmitError(f"{eval_path}: it scores a {evaluated.get('kind')!r}, not the artifact; "
                          "the score must be the artifact's")
    info = read_json_file(run_dir / "run_info.json") if (run_dir / "run_info.json").is_file() else None
    run = RunFigures(run_dir, train_config, model_config, count_params(model_config), artifact, records,
                     evaluated, read_json_file(quant_path) if quant_path else None, info)
    if info is not None:
        check_script_run(run)
    return run


def check_script_run(run: RunFigures) -> None:
    """A train_gpt.py run's records agree: its copy of the script is the one it ran (sha256), and its log
    exists and counts that script's bytes. Sets run.log."""
    code, run_id = run.info.get("code"), run.info.get("run_id")
    if not code or "settings" not in run.info:
        raise SubmitError(f"{run.run_dir}/run_info.json names no script and settings: it predates the records "
                          "folder's checks (rerun with a train_gpt.py from `python -m quant bundle`)")
    script = run.run_dir / SCRIPT_NAME
    if not script.is_file():
        raise SubmitError(f"{run.run_dir}: no {SCRIPT_NAME} (the copy of the script the run keeps)")
    if hashlib.sha256(script.read_bytes()).hexdigest() != code["sha256"]:
        raise SubmitError(f"{script} is not the script that ran (its sha256 differs from run_info.json's)")
    log = run.run_dir / "logs" / f"{run_id}.txt"
    if not log.is_file():
        raise SubmitError(f"{run.run_dir}: no logs/{run_id}.txt (the log train_gpt.py wrote)")
    sizes = {int(n) for n in CODE_SIZE_LINE.findall(log.read_text(encoding="utf-8"))}
    if sizes != {code["bytes"]}:
        raise SubmitError(f"{log}: its 'Code size' line says {sorted(sizes) or 'nothing'}, the script that ran has "
                          f"{code['bytes']} bytes")
    run.log = log

"""A finished run's figures, gathered from the files the package's commands leave in its folder.

    checkpoint.pt        train + model configs (python -m train writes it at the last step)
    metrics.jsonl        training: losses, val, EMA val, train time (python -m train, or the bundle)
    the artifact         model.tgz / final_model.int6.ptz (python -m quant, or the bundle)
    eval.json            the artifact's score: sliding window, TTT (python -m eval --json, or the bundle)
    quant.json|quant.log optional: the non-sliding round-trip score (python -m quant --eval-data's JSON line)
    run_info.json        optional: the hardware (the bundle writes it)

Nothing here evaluates anything: every figure is one a command measured and wrote down.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

ARTIFACT_NAMES = ("model.tgz", "final_model.int6.ptz")


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
    hardware: str | None = None
    logs: list[Path] = field(default_factory=list)  # challenge-format logs the bundle wrote (logs/*.txt)

    @property
    def steps(self) -> int:
        return max((int(r["step"]) for r in self.records if _num(r.get("train_loss"))), default=0)

    def last(self, key: str) -> dict | None:
        """The last record holding a number under `key`."""
        return next((r for r in reversed(self.records) if _num(r.get(key))), None)

    @property
    def train_time_s(self) -> float:
        record = self.last("train_time_ms")
        return record["train_time_ms"] / 1000.0 if record else float("nan")

    @property
    def artifact_bytes(self) -> int:
        return self.artifact.stat().st_size

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
        """The final evaluation's settings as train.challenge_env.EvalSettings fields (the bundle's defaults)."""
        from train.challenge_env import EvalSettings

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
    info_path = run_dir / "run_info.json"
    hardware = read_json_file(info_path).get("hardware") if info_path.is_file() else None
    return RunFigures(run_dir, train_config, model_config, count_params(model_config), artifact, records,
                      evaluated, read_json_file(quant_path) if quant_path else None, hardware,
                      sorted((run_dir / "logs").glob("*.txt")))

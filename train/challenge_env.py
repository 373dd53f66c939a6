"""The challenge's environment variables -> this package's configs, for the bundled train_gpt.py.

The challenge's train_gpt.py takes its hyperparameters from environment variables (ITERATIONS, SEED,
DATA_PATH, ...) with the script's own values as defaults. The bundle does the same: its defaults are the
configs of the run it was made from (embedded by quant.bundle as {"train": TrainConfig, "model": ModelConfig,
"eval": EvalSettings} dicts), and each variable below overrides one field. The names are the challenge's
(baseline and PR #598's) where it has one; every other TrainConfig / ModelConfig field is settable by its
upper-cased name (e.g. DECODER_LR_MULT, BACKEND), and the evaluation by the EVAL_* / TTT_* names of EVAL_VARS.
Unknown variables are ignored, as in the challenge's script; a bad value is one clear error.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from model.config import ModelConfig
from train.config import TrainConfig

CHALLENGE_DATA_PATH = "./data/datasets/fineweb10B_sp1024"
CHALLENGE_TOKENIZER_PATH = "./data/tokenizers/fineweb_1024_bpe.model"

# challenge name -> field, where the challenge's name differs from the upper-cased field name
TRAIN_ALIASES = {
    "ITERATIONS": "steps", "WARMDOWN_ITERS": "warmdown_steps", "TRAIN_BATCH_TOKENS": "batch_tokens",
    "VAL_LOSS_EVERY": "val_every", "TRAIN_LOG_EVERY": "log_every", "GRAD_CLIP_NORM": "grad_clip",
    "TIED_EMBED_LR": "tok_lr", "MUON_BACKEND_STEPS": "ns_steps", "MUON_MOMENTUM_WARMUP_START": "muon_momentum_start",
    "BETA1": "adam_beta1", "BETA2": "adam_beta2", "QAT_THRESHOLD": "late_qat_threshold",
}
MODEL_ALIASES = {"TRAIN_SEQ_LEN": "seq_len", "XSA_LAYERS": "xsa_last_n", "BIGRAM_EMBED_DIM": "bigram_dim"}
EVAL_VARS = {  # the whole list: eval fields have no upper-cased names (STRIDE or BATCH alone would be vague)
    "EVAL_STRIDE": "stride", "EVAL_WINDOW": "window", "EVAL_BATCH_SEQS": "batch", "EVAL_MAX_TOKENS": "max_tokens",
    "TTT_ENABLED": "ttt", "TTT_CHUNK_TOKENS": "ttt_chunk", "TTT_EPOCHS": "ttt_epochs", "TTT_LR": "ttt_lr",
    "TTT_FREEZE_BLOCKS": "ttt_freeze", "TTT_MOMENTUM": "ttt_momentum", "TTT_GRAD_CLIP": "ttt_clip",
    "TTT_WARMUP_FRAC": "ttt_warmup", "TTT_BATCH_SEQS": "ttt_batch_seqs", "TTT_QAT": "ttt_qat",
    "EVAL_SEED_QUIRK": "seed_quirk",
}
TTT_QAT_SETTINGS = {"auto": "auto", "on": "on", "1": "on", "true": "on", "off": "off", "0": "off", "false": "off"}
NOT_SETTABLE = {"model_preset"}  # a label of where the defaults came from, not a hyperparameter


@dataclass
class EvalSettings:
    """Final evaluation of the artifact: sliding window, optionally legal score-first TTT (`python -m eval` flags).

    `ttt_qat`: "auto" (fake-quantize the TTT training forwards when the model records that late QAT fired, as
    PR #598 did), "on" or "off" (TTT_QAT=auto|1|0); saved settings holding a bool read as "on" / "off".
    `seed_quirk`: score PR #598's duplicated tail windows (eval.windows), for exact parity with its figures."""
    stride: int = 64
    window: int = 0          # 0: the model's seq_len
    batch: int = 32
    max_tokens: int = 0      # 0: the whole val split (a submission's score); > 0 only for smoke runs
    ttt: bool = True
    ttt_chunk: int = 32768
    ttt_epochs: int = 10
    ttt_lr: float = 0.002
    ttt_freeze: int = 2
    ttt_momentum: float = 0.9
    ttt_clip: float = 1.0
    ttt_warmup: float = 0.0
    ttt_batch_seqs: int = 32
    ttt_qat: str = "auto"
    seed_quirk: bool = False

    def __post_init__(self):
        key = str(self.ttt_qat).strip().lower()  # True / False from settings saved before "auto" existed
        if key not in TTT_QAT_SETTINGS:
            raise ValueError(f"TTT_QAT={self.ttt_qat!r}: expected auto, 1 or 0")
        self.ttt_qat = TTT_QAT_SETTINGS[key]

    def eval_argv(self) -> list[str]:
        """These settings as `python -m eval` flags."""
        argv = ["--stride", str(self.stride), "--batch", str(self.batch)]
        if self.window:
            argv += ["--window", str(self.window)]
        if self.max_tokens:
            argv += ["--max-tokens", str(self.max_tokens)]
        if self.seed_quirk:
            argv.append("--seed-quirk")
        if self.ttt:
            argv += ["--ttt", "--ttt-chunk", str(self.ttt_chunk), "--ttt-epochs", str(self.ttt_epochs),
                     "--ttt-lr", repr(self.ttt_lr), "--ttt-freeze", str(self.ttt_freeze),
                     "--ttt-momentum", repr(self.ttt_momentum), "--ttt-clip", repr(self.ttt_clip),
                     "--ttt-warmup", repr(self.ttt_warmup), "--ttt-batch-seqs", str(self.ttt_batch_seqs)]
            if self.ttt_qat != "auto":
                argv.append("--ttt-qat" if self.ttt_qat == "on" else "--no-ttt-qat")
        return argv


@dataclass
class ChallengeSettings:
    train: TrainConfig
    model: ModelConfig
    eval: EvalSettings
    data_path: Path
    tokenizer_path: Path
    run_id: str
    out_dir: Path


def parse_value(name: str, text: str, default):
    """`text` as the type of `default` (bool: 1/0/true/false; tuple: comma-separated ints)."""
    text = text.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int) or default is None:
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        kind = "a list of integers" if isinstance(default, tuple) else type(default or 0).__name__
        raise ValueError(f"{name}={text!r}: expected {kind}") from None
    return text


def env_overrides(obj, aliases: dict[str, str], environ, upper_case_fields: bool = True) -> dict:
    """{field: value} for every variable in `environ` naming a field of dataclass `obj`: an alias, or (with
    `upper_case_fields`) the field's upper-cased name."""
    names = {f.name.upper(): f.name for f in dataclasses.fields(obj)
             if upper_case_fields and f.name not in NOT_SETTABLE}
    names.update(aliases)
    return {field: parse_value(var, environ[var], getattr(obj, field)) for var, field in names.items()
            if var in environ}


def settings_from_env(defaults: dict, environ=None) -> ChallengeSettings:
    """The run's configs (`defaults`) with the environment's overrides applied; ValueError on a bad value."""
    environ = os.environ if environ is None else environ
    tcfg = TrainConfig.from_dict(defaults["train"])
    mcfg = ModelConfig.from_dict(defaults["model"])
    ecfg = EvalSettings(**defaults.get("eval", {}))
    tcfg = dataclasses.replace(tcfg, **env_overrides(tcfg, TRAIN_ALIASES, environ))
    mcfg = dataclasses.replace(mcfg, **env_overrides(mcfg, MODEL_ALIASES, environ))
    ecfg = dataclasses.replace(ecfg, **env_overrides(ecfg, EVAL_VARS, environ, upper_case_fields=False))
    data_path = Path(environ.get("DATA_PATH", CHALLENGE_DATA_PATH))
    if "TOKENIZER_PATH" in environ:
        tokenizer = Path(environ["TOKENIZER_PATH"])
    elif Path(CHALLENGE_TOKENIZER_PATH).is_file():
        tokenizer = Path(CHALLENGE_TOKENIZER_PATH)
    else:  # this package's data layout keeps the tokenizer beside the shards
        tokenizer = data_path / "tokenizer.model"
    run_id = environ.get("RUN_ID") or f"seed{tcfg.seed}"
    return ChallengeSettings(tcfg, mcfg, ecfg, data_path, tokenizer, run_id, Path(environ.get("OUT_DIR", ".")))

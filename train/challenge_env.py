"""The challenge's environment variables -> this package's configs, for the bundled train_gpt.py.

The challenge's train_gpt.py takes its hyperparameters from environment variables (ITERATIONS, SEED,
DATA_PATH, ...) with the script's own values as defaults. The bundle does the same: its defaults are the
configs it was made with (embedded by quant.bundle as {"train": TrainConfig, "model": ModelConfig,
"eval": EvalSettings} dicts), and each variable below overrides one field. The names are the challenge's
(baseline and PR #598's) where it has one; every other TrainConfig / ModelConfig field is settable by its
upper-cased name (e.g. DECODER_LR_MULT, BACKEND), and the evaluation by the EVAL_* / TTT_* names of EVAL_VARS.
Unknown variables are ignored, as in the challenge's script; a bad value is one clear error. The variables a
run read are kept (ChallengeSettings.env) so its records folder can say how each seed was launched.

Outputs go to OUT_DIR, by default runs/<RUN_ID> under the working directory (RUN_ID defaults to seed<SEED>),
never into the folder train_gpt.py sits in unless OUT_DIR says so. `fit_to_world` picks the gradient
accumulation for the world size torchrun gives (any --nproc_per_node from 1 to 8, any preset).
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
    "TTT_BUDGET_SECONDS": "ttt_budget_s", "TTT_MAX_EPOCHS": "ttt_max_epochs", "EVAL_SKIP_BASELINE": "skip_baseline",
    "EVAL_SEED_QUIRK": "seed_quirk",
}
PATH_VARS = ("DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "OUT_DIR")  # where, not how: left out of a run's recipe
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
    ttt_budget_s: float = 0.0  # > 0: the evaluation's time budget (round trip included); TTT epochs sized to fit
    ttt_max_epochs: int = 50   # the most epochs the budget may choose
    skip_baseline: bool = False  # with TTT: no pre-TTT sliding pass (saves its time; its score is then unmeasured)
    seed_quirk: bool = False

    def __post_init__(self):
        key = str(self.ttt_qat).strip().lower()  # True / False from settings saved before "auto" existed
        if key not in TTT_QAT_SETTINGS:
            raise ValueError(f"TTT_QAT={self.ttt_qat!r}: expected auto, 1 or 0")
        self.ttt_qat = TTT_QAT_SETTINGS[key]

    def eval_argv(self, budget_left_s: float | None = None) -> list[str]:
        """These settings as `python -m eval` flags; `budget_left_s`: what is left of ttt_budget_s."""
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
            if self.skip_baseline:
                argv.append("--skip-baseline")
            if self.ttt_budget_s > 0:
                argv += ["--ttt-budget-s", repr(max(budget_left_s if budget_left_s is not None
                                                    else self.ttt_budget_s, 1.0)),
                         "--ttt-max-epochs", str(self.ttt_max_epochs)]
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
    env: dict = dataclasses.field(default_factory=dict)  # the variables this run read, as given


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


def variable_names(obj, aliases: dict[str, str], upper_case_fields: bool = True) -> dict[str, str]:
    """{variable: field} of dataclass `obj`: the aliases, and (with `upper_case_fields`) upper-cased field names."""
    names = {f.name.upper(): f.name for f in dataclasses.fields(obj)
             if upper_case_fields and f.name not in NOT_SETTABLE}
    names.update(aliases)
    return names


def env_overrides(obj, aliases: dict[str, str], environ, upper_case_fields: bool = True) -> dict:
    """{field: value} for every variable in `environ` naming a field of dataclass `obj`."""
    return {field: parse_value(var, environ[var], getattr(obj, field))
            for var, field in variable_names(obj, aliases, upper_case_fields).items() if var in environ}


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
    out_dir = Path(environ.get("OUT_DIR") or Path("runs") / run_id)
    known = {*variable_names(tcfg, TRAIN_ALIASES), *variable_names(mcfg, MODEL_ALIASES),
             *variable_names(ecfg, EVAL_VARS, upper_case_fields=False), *PATH_VARS}
    used = {var: environ[var] for var in sorted(known) if var in environ}
    return ChallengeSettings(tcfg, mcfg, ecfg, data_path, tokenizer, run_id, out_dir, used)


def fit_to_world(tcfg: TrainConfig, seq_len: int, world: int) -> tuple[TrainConfig, str | None]:
    """The train config with its gradient accumulation chosen for `world` ranks, and a note when the batch
    had to change.

    GRAD_ACCUM, when set, is kept as given. Otherwise the micro-steps per rank are accum_total / world where
    that divides (the seed's 8 / world: the same 48-sequence micro-batch on 1, 2, 4 or 8 GPUs), else the
    smallest count from ceil(accum_total / world) to twice that which splits the batch into whole sequences
    (e.g. 4 on 3 GPUs). When none does (a batch of 384 sequences on 5 or 7 GPUs) the batch is rounded down to
    the nearest whole split, and the note says so: that run trains on slightly fewer tokens per step."""
    if tcfg.grad_accum is not None:
        return tcfg, None
    base = -(-tcfg.accum_total // world)
    for accum in range(base, 2 * base + 1):
        if tcfg.batch_tokens % (world * accum * seq_len) == 0:
            return dataclasses.replace(tcfg, grad_accum=accum), None
    unit = world * base * seq_len
    batch = tcfg.batch_tokens // unit * unit
    if batch == 0:
        raise ValueError(f"TRAIN_BATCH_TOKENS={tcfg.batch_tokens} is less than one {seq_len}-token sequence per "
                         f"rank for {world} ranks")
    note = (f"TRAIN_BATCH_TOKENS {tcfg.batch_tokens} -> {batch}: the largest batch that {world} ranks x "
            f"{base} micro-steps split into whole {seq_len}-token sequences")
    return dataclasses.replace(tcfg, grad_accum=base, batch_tokens=batch), note

"""`python -m quant bundle --out train_gpt.py`: the standalone challenge script, before any run.

The honest path to a records folder starts here: write train_gpt.py from a preset, run it (once per seed, under
torchrun on the challenge's machine), then `python -m quant submit RUN_A RUN_B RUN_C` ships that very file with
the logs it wrote. The script's defaults are the preset's configs with the challenge's time limits (training
stops at MAX_WALLCLOCK_SECONDS; with TTT, the epochs are sized to TTT_BUDGET_SECONDS); every setting can still
be changed at run time through the environment variables of train.challenge_env. Last line: JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from quant.bundle import build_bundle
from common.atomic import atomic_write
from common.cli_errors import ArgumentParser, check_output_file, nonnegative_float, run_cli

CHALLENGE_LIMIT_S = 600.0  # the 10-minute track: training and evaluation each


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m quant bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the train_gpt.py to write")
    p.add_argument("--preset", default="seed", choices=("seed", "tiny"), help="model and training preset")
    p.add_argument("--max-wallclock-seconds", type=nonnegative_float, default=CHALLENGE_LIMIT_S,
                   help="default MAX_WALLCLOCK_SECONDS: training stops there (0: no cap; default 600)")
    p.add_argument("--ttt-budget-seconds", type=nonnegative_float, default=CHALLENGE_LIMIT_S,
                   help="default TTT_BUDGET_SECONDS: TTT epochs sized so the evaluation fits (0: TTT_EPOCHS as "
                        "set; default 600)")
    p.add_argument("--plain", action="store_true", help="store the modules as readable text (more bytes)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def preset_defaults(preset: str, max_wallclock_seconds: float, ttt_budget_seconds: float) -> dict:
    """{"train", "model", "eval"} config dicts a bundle embeds as its defaults."""
    from model.config import get_config
    from train.challenge_env import EvalSettings
    from train.config import get_train_config

    train = get_train_config(preset, max_wallclock_seconds=max_wallclock_seconds)
    return {"train": train.to_dict(), "model": get_config(train.model_preset).to_dict(),
            "eval": dataclasses.asdict(EvalSettings(ttt_budget_s=ttt_budget_seconds))}


def bundle_code(model_config: dict) -> tuple[int, str]:
    """(bytes, description) of the train_gpt.py `python -m quant bundle` writes for the preset whose model config
    equals `model_config` (the seed preset when none does)."""
    from model.config import get_config
    from train.config import TRAIN_PRESETS, get_train_config

    def canonical(config: dict) -> str:
        return json.dumps(config, sort_keys=True, default=list)

    preset = next((p for p in TRAIN_PRESETS
                   if canonical(get_config(get_train_config(p).model_preset).to_dict()) == canonical(model_config)),
                  "seed")
    bundle = build_bundle(preset_defaults(preset, CHALLENGE_LIMIT_S, CHALLENGE_LIMIT_S))
    return bundle.code_bytes, (f"train_gpt.py as `python -m quant bundle --preset {preset}` writes it "
                               f"({len(bundle.modules)} modules)")


def write_script(args: argparse.Namespace) -> dict:
    out = check_output_file(args.out, overwrite=args.overwrite)
    bundle = build_bundle(preset_defaults(args.preset, args.max_wallclock_seconds, args.ttt_budget_seconds),
                          compress=not args.plain)
    atomic_write(out, [bundle.text.encode("utf-8")])
    print(f"{out}: {len(bundle.modules)} modules, {bundle.source_bytes:,} source bytes -> "
          f"{bundle.stripped_bytes:,} stripped -> {bundle.code_bytes:,} bytes"
          f"{'' if args.plain else ' (lzma + base85)'}")
    return {"out": str(out), "code_bytes": bundle.code_bytes, "modules": len(bundle.modules),
            "source_bytes": bundle.source_bytes, "stripped_bytes": bundle.stripped_bytes, "preset": args.preset,
            "requirements": bundle.requirements}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        print(json.dumps(write_script(args), sort_keys=True))
        return 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())

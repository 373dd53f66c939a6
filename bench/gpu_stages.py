"""The stages of `python -m bench.gpu_check`: what each runs, its share of the budget, and what is computed after.

Order is priority: if the budget runs out, the stages at the end are the ones skipped. Each stage is one pytest
run (the tests, or the bench cases chosen by a -k expression), so a stage's selection is checked by the CPU dry
run in CI: an expression that selects nothing fails there, not on a lent GPU.
"""
from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bench import case_log  # noqa: F401  (gpu_check reads case logs through this module)

# kernel test files: every test in them runs on CUDA in a real run (bf16 where a test has a bf16 case)
KERNEL_TEST_FILES = ("tests/test_attention.py", "tests/test_mlp.py", "tests/test_rmsnorm.py", "tests/test_rope.py",
                     "tests/test_cross_entropy.py", "tests/test_int6_matmul.py", "tests/test_residual_norm.py",
                     "tests/test_model_triton.py", "tests/test_kernel_policy.py")
PER_TEST_TIMEOUT_S = 240  # pytest-timeout (on the GPU image): one hung test must not eat the whole budget


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    kind: str  # "tests" or "bench"
    weight: float  # share of the remaining budget, relative to the stages still to run
    selection: tuple[str, ...]  # tests: pytest paths (+ options); bench: a -k expression

    def pytest_args(self, dry_run: bool) -> list[str]:
        if self.kind == "tests":
            args = [*self.selection, "-v", "-rfEs"]  # -v: a stage cut by its time guard still shows its progress
            if dry_run and "-m" not in self.selection:  # the CPU runs these files in the main suite: plumbing only
                args += ["-m", "gpu"]
            if importlib.util.find_spec("pytest_timeout"):
                args += [f"--timeout={PER_TEST_TIMEOUT_S}"]
            return args
        args = ["bench", "-v", "-rfEs", "-k", self.selection[0]]
        return args + (["--bench-quick", "--benchmark-disable"] if dry_run else [])


_POLICY_CANDIDATES = "(fused_norm or sdpa or cublas_mlp or inductor_ce)"
STAGES = (
    Stage("kernel_tests", "kernel tests on CUDA", "tests", 0.18, KERNEL_TEST_FILES),
    Stage("gpu_tests", "other gpu-marked tests", "tests", 0.05,
          ("tests", "-m", "gpu", *(f"--ignore={path}" for path in KERNEL_TEST_FILES))),
    Stage("train_step", "a. seed train step, 48 x 2048: eager ops + compile (SDPA flash) vs the default kernel policy "
          "+ compile, fwd+bwd apart from the optimizer", "bench", 0.22,
          (f"(test_train_step and compile and not triton and not policy) or (test_train_step_policy and not "
           f"{_POLICY_CANDIDATES}) or test_optimizer_step",)),
    Stage("attention", "b. attention fwd, bwd and fwd+bwd TFLOP/s vs SDPA flash / cuDNN", "bench", 0.12,
          ("test_attention",)),
    Stage("memory", "c. GB/s of RMSNorm (+ residual), QK-norm + RoPE, softcapped CE beside a copy ceiling", "bench",
          0.07, ("test_rms_norm or test_qk_norm_rope or test_softcap_cross_entropy or test_copy_ceiling",)),
    Stage("int6", "d. int6 matmul vs dequantize + cuBLAS and bf16 cuBLAS", "bench", 0.08, ("test_int6_linear",)),
    Stage("ttt", "e. TTT scoring and training tokens/s, projected full-validation time", "bench", 0.14,
          ("(test_ttt_score or test_ttt_train) and compile and not triton",)),
    Stage("policies", "f. the other kernel-policy candidates and whole-model Triton, compiled (picks the default)",
          "bench", 0.14, (f"(test_train_step_policy and {_POLICY_CANDIDATES}) or (test_train_step and triton and "
                          f"compile) or ((test_ttt_score or test_ttt_train) and triton and compile)",)),
)

# the full validation run a TTT projection is for (spec §6): 62,021,632 targets, windows of 2048 every 64
FULL_VALIDATION = dict(targets=62_021_632, window=2048, stride=64)


def stage_limit(stage: Stage, left_s: float, remaining: list[Stage]) -> float:
    """This stage's time guard: its weight's share of what is left (time a stage leaves unused goes on)."""
    total = sum(s.weight for s in remaining)
    return max(left_s, 0.0) * stage.weight / total if total else 0.0


def junit_counts(path: Path) -> dict:
    """{tests, failures, errors, skipped} summed over a JUnit XML's test suites; {} when it was not written."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    return {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}


def _best(cases: list[dict], case: str) -> tuple[str, float] | None:
    """(variant, tokens/s) of the fastest variant of `case`, or None when it was not measured."""
    rows = [(c["variant"], c["tokens_per_s"]) for c in cases if c["case"] == case and c.get("tokens_per_s")]
    return max(rows, key=lambda row: row[1]) if rows else None


def projections(cases: list[dict]) -> dict:
    """Projected wall time of the full validation run's score-first TTT (10 epochs) on this GPU, from the
    fastest measured ttt_score and ttt_train variants, by eval.plan: the busiest rank's score batches (padded, as
    run) at the measured forwarded tokens/s + its SGD steps at the measured training tokens/s. One GPU as
    measured; N GPUs ideal (each rank's share at the same tokens/s, all-reduce not counted). The ttt_score case
    forwards whole windows and reads the head at their last `stride` positions, as eval.scoring does."""
    score, train = _best(cases, "ttt_score"), _best(cases, "ttt_train")
    if not score or not train:
        return {}
    from eval.plan import make_plan
    from eval.ttt import TTTConfig
    from model.config import get_config

    ttt, cfg = TTTConfig(), get_config("seed")
    full = dict(window=FULL_VALIDATION["window"], stride=FULL_VALIDATION["stride"], batch=32, sliding=False, ttt=ttt)
    plans = {world: make_plan(cfg, FULL_VALIDATION["targets"], world=world, **full) for world in (1, 8)}
    seconds = {world: (plan.ttt_score.score_batches * plan.ttt_score.batch * plan.window / score[1],  # one rank
                       plan.ttt.sgd_steps * plan.ttt.seqs_per_rank * plan.window / train[1])
               for world, plan in plans.items()}
    one, (score_s, train_s) = plans[1], seconds[1]
    return {"ttt_full_validation": {
        "windows": one.ttt_score.windows, "forwarded_tokens": one.ttt_score.forwarded_tokens,
        "trained_tokens": one.ttt.trained_tokens, "epochs": ttt.epochs, "score_variant": score[0],
        "train_variant": train[0], "score_s": round(score_s, 1), "train_s": round(train_s, 1),
        "total_s": round(score_s + train_s, 1),
        "scored_targets_per_s": round(score[1] * one.ttt_score.scored_targets / one.ttt_score.forwarded_tokens),
        "total_s_8gpu_ideal": round(sum(seconds[8]), 1)}}


def summary_table(result: dict) -> str:
    """The check's closing text: one line per stage, then the projection."""
    lines = ["", "| stage | status | s | tests (fail/err/skip) | cases |", "|---|---|---|---|---|"]
    for stage in result["stages"]:
        t = stage["tests"]
        tests = f"{t.get('tests', 0)} ({t.get('failures', 0)}/{t.get('errors', 0)}/{t.get('skipped', 0)})" if t else "—"
        lines.append(f"| {stage['name']} | {stage['status']} | {stage['seconds']:.0f} | {tests} | "
                     f"{stage['measured']} |")
    projection = result["projections"].get("ttt_full_validation")
    if projection:
        lines.append(f"\nprojected full-validation TTT ({projection['epochs']} epochs): {projection['total_s']:.0f} s "
                     f"= scoring {projection['score_s']:.0f} s + training {projection['train_s']:.0f} s"
                     + (f"; 8 GPUs, ideal: {projection['total_s_8gpu_ideal']:.0f} s"
                        if "total_s_8gpu_ideal" in projection else ""))
    lines.append(f"total {result['seconds']:.0f} s of a {result['budget_s']:.0f} s budget")
    return "\n".join(lines)

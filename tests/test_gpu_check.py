"""`python -m bench.gpu_check`: budget sharing, case logs, JUnit counts, the TTT projection and --import.

The dry run itself (every stage's pytest selection on the CPU at quick shapes) runs in .ci/run; these tests
hold the pieces that decide what a lent GPU's minutes bring back.
"""
import json

import pytest

from bench import case_log, gpu_check, gpu_stages, history


def _case(case, variant, tokens_per_s, ms=10.0):
    return {"case": case, "variant": variant, "shape": "s", "ms": ms, "tokens_per_s": tokens_per_s,
            "tflops": None, "gbps": None, "peak_mib": 1.0, "mfu": None}


def test_stage_limits_share_what_is_left_by_weight():
    stages = list(gpu_stages.STAGES)
    assert [s.name for s in stages][:3] == ["kernel_tests", "gpu_tests", "train_step"]  # priority order
    limits = [gpu_stages.stage_limit(s, 480.0, stages[i:]) for i, s in enumerate(stages)]
    assert limits[0] == pytest.approx(480 * stages[0].weight / sum(s.weight for s in stages))
    assert limits[-1] == pytest.approx(480.0)  # the last stage gets all that is left
    assert gpu_stages.stage_limit(stages[0], -5.0, stages) == 0.0


def test_every_bench_stage_selects_a_test_expression_and_quick_flags_only_in_dry_run():
    for stage in gpu_stages.STAGES:
        full, dry = stage.pytest_args(False), stage.pytest_args(True)
        if stage.kind == "bench":
            assert "--bench-quick" in dry and "--bench-quick" not in full
            assert full[full.index("-k") + 1] == stage.selection[0]
        else:
            assert dry.count("-m") == 1 and "gpu" in dry


def test_case_log_keeps_finished_cases_and_drops_a_torn_last_line(tmp_path, monkeypatch):
    path = tmp_path / "cases.jsonl"
    monkeypatch.setenv(case_log.ENV_VAR, str(path))
    case_log.append_case(_case("train_step", "compile", 1e6), bf16_peak_tflops=780.0)
    case_log.append_case(_case("train_step", "triton+compile", 1.2e6))
    with open(path, "a") as f:
        f.write('{"case": "ttt_sc')  # killed mid-write by the time guard
    cases, peak = case_log.read_cases(path)
    assert [c["variant"] for c in cases] == ["compile", "triton+compile"] and peak == 780.0
    assert case_log.read_cases(tmp_path / "absent.jsonl") == ([], None)


def test_case_log_refuses_a_case_without_a_valid_time(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(_case("x", "y", 1.0, ms=float("nan"))) + "\n" + json.dumps(_case("x", "z", 1.0)) + "\n")
    with pytest.raises(ValueError, match="no valid time"):
        case_log.read_cases(path)


def test_junit_counts(tmp_path):
    path = tmp_path / "j.xml"
    path.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/></testsuites>')
    assert gpu_stages.junit_counts(path) == {"tests": 5, "failures": 1, "errors": 0, "skipped": 2}
    assert gpu_stages.junit_counts(tmp_path / "missing.xml") == {}


def test_ttt_projection_uses_the_fastest_variants_and_the_full_validation_plan():
    cases = [_case("ttt_score", "compile", 2e6), _case("ttt_score", "triton+compile", 4e6),
             _case("ttt_train", "compile", 1e6)]
    p = gpu_stages.projections(cases)["ttt_full_validation"]
    assert p["windows"] == 969_057  # exact-once windows (the eval default) at 62,021,632 targets, stride 64
    assert p["score_variant"] == "triton+compile" and p["train_variant"] == "compile"
    assert p["trained_tokens"] == 10 * 1892 * 32768  # every chunk but the last, 10 epochs
    assert p["forwarded_tokens"] == 30_284 * 32 * 2048  # eval.plan: padded score batches of 32 windows, as run
    assert p["score_s"] == pytest.approx(p["forwarded_tokens"] / 4e6, abs=0.1)
    assert p["train_s"] == pytest.approx(p["trained_tokens"] / 1e6, abs=0.1)
    assert p["total_s"] == pytest.approx(p["score_s"] + p["train_s"], abs=0.2)
    assert p["scored_targets_per_s"] == round(4e6 * 62_021_632 / p["forwarded_tokens"])
    # 8 GPUs, ideal: each rank scores 2 batches and trains 2 of the 16 sequences per chunk
    assert p["total_s_8gpu_ideal"] == pytest.approx((1893 * 2 * 32 * 2048) / 4e6 + 18_920 * 2 * 2048 / 1e6, abs=0.2)
    assert gpu_stages.projections(cases[:2]) == {}  # no training figure, no projection


def _result(tmp_path, **overrides):
    result = {"date": "2026-11-28T12:00:00+00:00", "git_sha": "abc1234", "dry_run": False, "budget_s": 480.0,
              "seconds": 470.0, "bf16_peak_tflops": 780.0,
              "environment": {"device": "NVIDIA H200", "driver": "580", "python": "3.12.3", "torch": "2.11.0",
                              "triton": "3.6.0", "cuda": "13.0", "zstandard": True},
              "stages": [{"name": "train_step", "title": "a", "status": "passed", "seconds": 100.0,
                          "tests": {"tests": 3, "failures": 0, "errors": 0, "skipped": 0}, "measured": 2,
                          "bf16_peak_tflops": 780.0},
                         {"name": "ttt", "title": "e", "status": "skipped (out of budget)", "seconds": 0.0,
                          "tests": {}, "measured": 0, "bf16_peak_tflops": None}],
              "cases": [_case("train_step", "compile", 1e6), _case("train_step", "triton+compile", 1.3e6)],
              "projections": {}}
    result.update(overrides)
    (tmp_path / gpu_check.RESULT_NAME).write_text(json.dumps(result))
    return result


def test_import_appends_a_record_and_renders_the_check(tmp_path):
    _result(tmp_path)
    hist, md = tmp_path / "history.jsonl", tmp_path / "BENCHMARKS.md"
    note = gpu_check.import_result(tmp_path, hist, md)
    assert "appended 2 cases" in note
    (record,) = history.load_history(hist)
    assert record["device"] == "NVIDIA H200" and record["triton"] == "3.6.0" and record["complete"]
    assert record["git_sha"] == "abc1234" and record["gpu_check"]["stages"][1]["status"].startswith("skipped")
    text = md.read_text()
    assert "## GPU check of the newest record" in text and "| ttt | skipped (out of budget) |" in text
    assert "1.3M" in text  # the triton+compile train step


def test_import_refuses_a_dry_run_and_an_empty_run(tmp_path):
    _result(tmp_path, dry_run=True)
    with pytest.raises(SystemExit, match="dry run"):
        gpu_check.import_result(tmp_path, tmp_path / "h.jsonl", tmp_path / "m.md")
    _result(tmp_path, cases=[])
    with pytest.raises(SystemExit, match="no measured case"):
        gpu_check.import_result(tmp_path, tmp_path / "h.jsonl", tmp_path / "m.md")
    assert not (tmp_path / "h.jsonl").exists()


def test_problems_name_failed_and_cut_stages_and_empty_dry_run_selections(tmp_path):
    result = _result(tmp_path)
    assert gpu_check.problems(result) == []
    result["stages"][0]["status"] = "cut at 96 s (time guard)"
    assert gpu_check.problems(result) == ["stage train_step: cut at 96 s (time guard)"]
    result.update(dry_run=True)
    result["stages"][0].update(status="passed", tests={"tests": 0})
    assert "stage train_step: selected no test" in gpu_check.problems(result)


def test_cli_refuses_without_cuda_unless_dry_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "_cuda", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path / "out"), "--stages", "nope"])


def test_the_train_step_stage_selects_one_baseline_and_the_default_policy_only():
    """Each compiled seed model costs about a minute of a lent GPU: stage (a) compiles exactly two, the rest wait
    for the last stage."""
    import subprocess
    import sys

    stages = {s.name: s for s in gpu_stages.STAGES}
    out = subprocess.run([sys.executable, "-m", "pytest", "bench", "--co", "-p", "no:cacheprovider", "-k",
                          stages["train_step"].selection[0]], capture_output=True, text=True,
                         cwd=gpu_check.ROOT).stdout
    names = sorted(line.split("::")[1] for line in out.splitlines() if "::" in line)
    assert names == ["test_optimizer_step", "test_train_step[compile]", "test_train_step_policy[default+compile]"]

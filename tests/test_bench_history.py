"""Unit tests of the benchmark bookkeeping: FLOP formulas, history records, BENCHMARKS.md, the CLI's JSON parsing.

No GPU and no timing: these check the arithmetic and the files that turn measurements into a history.
"""
import json
from types import SimpleNamespace

import pytest

from bench import flops, history
from bench.__main__ import measured_cases, parse_args, pytest_args
from bench.timing import rotating

SEED = SimpleNamespace(vocab_size=1024, num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, head_dim=64,
                       mlp_hidden=1536, bigram_buckets=2048, bigram_dim=128, ve_layers=(9, 10), ve_dim=128)
LAYER = 512 * 512 + 2 * 512 * 256 + 512 * 512 + 2 * 512 * 1536  # q, k, v, o, up, down = 2,359,296


def test_matmul_params_of_the_seed():
    assert flops.layer_matmul_params(SEED) == LAYER == 2_359_296
    assert flops.matmul_params(SEED) == 11 * LAYER + 1024 * 512 + 128 * 512 + 128 * 256 == 26_574_848


def test_matmul_params_match_the_model_config():
    config = pytest.importorskip("model.config")
    cfg = config.get_config("seed")
    assert flops.matmul_params(cfg) == flops.matmul_params(SEED)


def test_attention_flops_follow_the_stated_formula():
    per_token = flops.attention_forward_flops_per_token(SEED, 2048)
    assert per_token == 2 * 2 * 11 * 1024 * 8 * 64  # 23.07 MFLOP, causal average context T/2
    train = flops.train_flops_per_token(SEED, 2048)
    assert train == 6 * 26_574_848 + 3 * per_token
    assert train == pytest.approx(228.7e6, rel=1e-3)  # anchors: ~228 MFLOP/token
    assert flops.forward_flops_per_token(SEED, 2048) == 2 * 26_574_848 + per_token
    assert flops.train_flops_per_token(SEED, 2048, frozen_layers=2) == train - 2 * 2 * LAYER


def test_kernel_flops():
    forward = 4 * 2 * 8 * 64 * 2048 * 2048 / 2
    assert flops.attention_kernel_flops(2, 2048, 8, 64, backward=False) == forward
    assert flops.attention_kernel_flops(2, 2048, 8, 64, backward=True) == 3.5 * forward
    assert flops.linear_flops(64, 512, 1536) == 2 * 64 * 512 * 1536
    assert flops.linear_flops(64, 512, 1536, backward=True) == 6 * 64 * 512 * 1536


def test_mfu():
    assert flops.mfu(250.0, 1000.0) == 0.25
    assert flops.mfu(None, 1000.0) is None
    assert flops.mfu(250.0, None) is None


def test_rotating_cycles_through_input_sets():
    seen = []
    call = rotating(lambda a: seen.append(a), [(1,), (2,), (3,)])
    for _ in range(7):
        call()
    assert seen == [1, 2, 3, 1, 2, 3, 1]
    with pytest.raises(ValueError):
        rotating(print, [])


ENV = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "cuda": "12.8"}


def _case(case, variant, tokens_per_s, **extra):
    return {"case": case, "variant": variant, "shape": "B48 T2048", "ms": 1e3 * 98304 / tokens_per_s,
            "tokens_per_s": tokens_per_s, "tflops": None, "gbps": None, "peak_mib": 1000.0, "mfu": None, **extra}


def _record(sha, cases, date="2026-01-01T00:00:00+00:00"):
    return history.make_record(cases, 700.0, ENV, sha, date=date)


def test_empty_history_says_no_gpu_record(tmp_path):
    assert history.load_history(tmp_path / "absent.jsonl") == []
    (tmp_path / "h.jsonl").write_text("")
    md = tmp_path / "B.md"
    assert history.regenerate(tmp_path / "h.jsonl", md, tmp_path / "h.png") == []
    text = md.read_text()
    assert "No GPU record yet" in text and "make bench" in text
    assert not (tmp_path / "h.png").exists()


def test_append_and_load_round_trip(tmp_path):
    path = tmp_path / "history.jsonl"
    first = _record("aaa", [_case("train_step", "eager", 1e5)])
    second = _record("bbb-dirty", [_case("train_step", "triton", 3e5)])
    history.append_record(first, path)
    history.append_record(second, path)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["cases"] for line in lines)
    assert [r["git_sha"] for r in history.load_history(path)] == ["aaa", "bbb-dirty"]
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_load_rejects_a_bad_line_naming_it(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(_record("aaa", [_case("x", "eager", 1.0)])) + "\n{not json\n")
    with pytest.raises(history.HistoryError, match=r"history.jsonl:2"):
        history.load_history(path)
    path.write_text('{"date": "today"}\n')
    with pytest.raises(history.HistoryError, match="cases"):
        history.load_history(path)


def test_make_record_validates_cases():
    with pytest.raises(ValueError, match="no measured cases"):
        history.make_record([], None, ENV, "aaa")
    with pytest.raises(ValueError, match="variant"):
        history.make_record([{"case": "x"}], None, ENV, "aaa")
    record = history.make_record([_case("x", "eager", 1.0)], 650.5, ENV, "aaa", complete=False)
    assert record["device"] == ENV["device"] and record["bf16_peak_tflops"] == 650.5 and not record["complete"]


def test_markdown_puts_variants_side_by_side_with_the_latest_figures():
    old = _record("1111111aaaa", [_case("train_step", "eager", 1.0e5), _case("train_step", "triton", 2.0e5),
                                  _case("rms_norm fwd+bwd", "eager", 5.0e9)], date="2026-01-01T00:00:00+00:00")
    new = _record("2222222bbbb-dirty", [_case("train_step", "eager", 1.1e5), _case("train_step", "triton", 3.3e5,
                                                                              mfu=0.345)],
                  date="2026-02-01T00:00:00+00:00")
    md = history.render_markdown([old, new])
    assert "No GPU record yet" not in md
    header = next(line for line in md.splitlines() if line.startswith("| case | shape |"))
    assert header.index("eager") < header.index("triton")
    row = next(line for line in md.splitlines() if line.startswith("| train_step | "))
    assert "110k" in row and "330k" in row and "3.00x" in row  # newest record wins; triton / best baseline
    assert "200k" not in row
    assert any(line.startswith("| rms_norm fwd+bwd |") and "5G" in line for line in md.splitlines())
    assert "34.5%" in md and "`2222222bbbb-dirty`" in md  # MFU and the dirty-tree mark in the details
    history_rows = [line for line in md.splitlines() if "| train_step |" in line and line.startswith("| 2026-")]
    assert len(history_rows) == 2 and "`1111111aaaa`" in history_rows[0]
    history_header = md.splitlines()[md.splitlines().index(history_rows[0]) - 2]
    assert "rms_norm" not in md.split("## History")[1] and "| eager | triton |" in history_header
    assert "NVIDIA H100" in md and "700" in md


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    records = [_record("aaa", [_case("ttt_score", "eager", 1e6), _case("ttt_score", "triton", 2e6)]),
               _record("bbb", [_case("ttt_score", "triton", 2.5e6)])]
    assert history.plot_history(records, tmp_path / "h.png") is None
    assert (tmp_path / "h.png").read_bytes().startswith(b"\x89PNG")
    note = history.plot_history([_record("aaa", [_case("rms_norm", "eager", 1.0)])], tmp_path / "none.png")
    assert "no headline case" in note


def test_git_sha_is_a_string():
    sha = history.git_sha()
    assert sha == "unknown" or len(sha.removesuffix("-dirty")) == 40


def test_cli_reads_figures_from_the_benchmark_json(tmp_path):
    report = {"benchmarks": [
        {"extra_info": {**_case("train_step", "triton", 3e5), "bf16_peak_tflops": 712.0}},
        {"extra_info": {"case": "attention fwd", "variant": "triton", "quick": True}},  # quick: no figures
    ]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    cases, peak = measured_cases(str(path))
    assert peak == 712.0 and [c["case"] for c in cases] == ["train_step"]
    assert set(cases[0]) == {"case", "variant", "shape", "ms", "tokens_per_s", "tflops", "gbps", "peak_mib", "mfu"}


def test_cli_arguments_map_to_pytest():
    argv = pytest_args(parse_args(["--quick", "--only", "attention"]), None)
    assert "--bench-quick" in argv and "--benchmark-disable" in argv and argv[argv.index("-k") + 1] == "attention"
    argv = pytest_args(parse_args([]), "/tmp/x.json")
    assert "--benchmark-json=/tmp/x.json" in argv and "--bench-quick" not in argv

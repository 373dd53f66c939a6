"""The ahead-of-time kernel report (bench/aot): its ptxas-log parser, dot detection, rules, case enumeration
and tables without compiling anything, plus one real compile of one small kernel in a subprocess (the report
needs TRITON_INTERPRET=0, which this process cannot switch to once kernels are imported)."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import triton

from bench.aot.case import Case, autotuned_cases, config_label, fixed_case
from bench.aot.compile import Result, dot_kind, parse_ptxas_log
from bench.aot.report import Row, differences, headline, markdown, rows_from_json, text_table, to_json
from bench.aot.rules import SMEM_LIMIT, violations

ROOT = Path(__file__).resolve().parents[1]

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_relu2_matmul_kernel' for 'sm_90a'
ptxas info    : Function properties for _relu2_matmul_kernel
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size
ptxas info    : Compile time = 38.972 ms
"""


def test_parse_ptxas_log_reads_registers_and_spills():
    assert parse_ptxas_log(PTXAS_LOG) == (255, 12, 8)
    clean = PTXAS_LOG.replace("12 bytes spill stores, 8 bytes", "0 bytes spill stores, 0 bytes")
    assert parse_ptxas_log(clean.replace("Used 255", "Used 109")) == (109, 0, 0)


def test_parse_ptxas_log_takes_the_maximum_over_functions_and_rejects_an_empty_log():
    other = PTXAS_LOG.replace("Used 255", "Used 40").replace("12 bytes spill stores", "100 bytes spill stores")
    two = PTXAS_LOG + other
    assert parse_ptxas_log(two) == (255, 100, 8)
    with pytest.raises(ValueError, match="no 'Used N registers'"):
        parse_ptxas_log("")


def test_dot_kind():
    assert dot_kind("tt.load tt.store", "ld.global") == "-"
    assert dot_kind("%1 = tt.dot %a, %b", "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == "wgmma"
    assert dot_kind("%1 = tt.dot %a, %b", "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == "mma"
    assert dot_kind("%1 = tt.dot %a, %b", "fma.rn.f32 %f1, %f2, %f3, %f4;") == "fma"


def test_rules():
    ok = Result(regs=128, smem=SMEM_LIMIT["sm_80"], num_warps=8)
    assert violations(ok, "sm_80", default=True) == []
    assert violations(Result(error="PTXASError: boom"), "sm_90a", default=False) == ["compile error: PTXASError: boom"]
    over = Result(regs=128, smem=SMEM_LIMIT["sm_80"] + 1)
    assert "shared memory" in violations(over, "sm_80", default=False)[0]
    assert violations(over, "sm_90a", default=False) == []  # within H100's 227 KB
    assert "registers" in violations(Result(regs=255, num_warps=16), "sm_90a", default=False)[0]
    spilling = Result(regs=255, spill_stores=8, spill_loads=4)
    assert violations(spilling, "sm_90a", default=False) == []  # an autotuned config: the tuner times it
    assert violations(spilling, "sm_90a", default=True) == ["default config spills 8 B stores / 4 B loads"]


def _fake_autotuner(configs, prune=None):
    return SimpleNamespace(fn="jit-fn", configs=configs, early_config_prune=prune)


def test_autotuned_cases_follow_the_autotuners_prune_and_mark_single_configs_default():
    configs = [triton.Config({"BLOCK_M": bm}, num_warps=4, num_stages=3) for bm in (16, 128)]
    small_only = _fake_autotuner(configs, lambda cs, args: [c for c in cs if c.kwargs["BLOCK_M"] <= args["M"]])
    cases = autotuned_cases("k", "bf16", small_only, (), {"FLAG": 1}, {"M": 64})
    assert [c.kwargs["BLOCK_M"] for c in cases] == [16] and not cases[0].default
    assert cases[0].kwargs["FLAG"] == 1 and cases[0].config == "BLOCK_M=16 w4 s3"
    assert len(autotuned_cases("k", "bf16", small_only, (), {})) == 2  # no shapes given: nothing pruned
    assert autotuned_cases("k", "bf16", _fake_autotuner(configs[:1]), (), {})[0].default


def test_fixed_case_fills_triton_launch_defaults():
    case = Case("k", "fp32", fn=None, args=(), kwargs={"BLOCK_D": 512, "num_warps": 2}, default=True)
    assert case.config == "BLOCK_D=512 w2 s3"
    label = config_label({"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2})
    assert label == "BLOCK_M=64 BLOCK_N=32 w8 s2"
    with pytest.raises(TypeError, match="not a Triton JIT function"):
        fixed_case("k", "fp32", object(), (), {})


def _row(**kw):
    base = dict(kernel="mlp.k", variant="bf16", config="BLOCK_M=128 w8 s3", arch="sm_90a", default=False, regs=128,
                spill_stores=0, spill_loads=0, smem=98304, dot="wgmma", compile_s=1.0)
    return Row(**{**base, **kw})


def test_tables_headline_and_differences():
    rows = [_row(), _row(arch="sm_80", dot="mma", spill_stores=16, spill_loads=12),
            _row(kernel="rope.k", default=True, error="PTXASError: x", violations=["compile error: PTXASError: x"])]
    text = text_table(rows)
    assert "spills (tuned)" in text and "ERROR" in text and "(default)" in text
    mlp, rope = headline(rows)
    assert mlp[:4] == ["mlp.k", "2", "128", "96.0"] and "sm_80" in mlp[4] and mlp[5] == "wgmma"
    assert rope[-1] == "1"
    meta = {"command": "python -m bench.aot", "triton": "3.7.1", "torch": "2.13.0", "date": "2026-01-01",
            "ptxas": "V12.8", "wall_s": 1.0, "jobs": 2, "cpus": 2, "shapes": "model_dim 512", "exit": 1,
            "spec_errors": [], "uncovered": ["xsa._xsa_kernel"], "import_errors": []}
    other_meta, other_rows = rows_from_json(to_json([_row(regs=130), rows[1]], {**meta, "triton": "3.6.0", "exit": 0}))
    assert other_meta["triton"] == "3.6.0" and other_rows[1] == rows[1]
    diff, reg_rows, reg_max = differences(rows, other_rows)
    assert (reg_rows, reg_max) == (1, 2)  # the first row: 128 vs 130 registers, nothing else
    assert len(diff) == 1 and diff[0][0] == "rope.k" and diff[0][5] == "not compiled"
    md = markdown(rows, meta, (other_meta, other_rows))
    assert "**Verdict: FAIL**" in md and "Checked with triton 3.6.0" in md and "xsa._xsa_kernel" in md


def test_report_compiles_one_kernel_for_both_arches(tmp_path):
    """The CLI end to end on one small kernel: real Triton compiles and ptxas logs, rows in the JSON."""
    out = tmp_path / "aot.json"
    proc = subprocess.run([sys.executable, "-m", "bench.aot", "--spec", "rmsnorm", "--only", "forward_kernel fp32",
                           "--jobs", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["arch"] for r in rows) == ["sm_80", "sm_90a"]
    assert all(r["error"] is None and 0 < r["regs"] <= 255 and r["dot"] == "-" and r["default"] for r in rows)

"""The honest path to a records folder, end to end on the CPU: `quant bundle` writes train_gpt.py, three seeds
run it, `quant submit` ships the script and the logs it wrote with the seeds' statistics; then the folder's
train_gpt.py runs from a copy, under plain `python` and under `torchrun --nproc_per_node=2`, where the package
cannot be imported (and where a stand-in for Hugging Face's `kernels` package sits first on the path), and the
folder's files are unchanged afterwards.

The three runs are in-process calls of the bundle's entry point with the script as its code, i.e. the package's
modules; the standalone run of the same seed must then give the same artifact bytes, so the bundle and the
package are the same program.
"""
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quant.bundle import DECODE_SCRIPT, read_bundle

REPO = Path(__file__).resolve().parents[1]
SEEDS = (7, 8, 9)
TINY_RUN = {  # tiny dims, three steps, a short evaluation with four TTT chunks
    "ITERATIONS": "3", "TRAIN_BATCH_TOKENS": "128", "VAL_LOSS_EVERY": "0", "VAL_MAX_TOKENS": "256",
    "MODEL_DIM": "64", "MLP_HIDDEN": "128", "TRAIN_SEQ_LEN": "32", "ROPE_TRAIN_SEQ_LEN": "32", "BIGRAM_DIM": "32",
    "VE_DIM": "32", "EVAL_STRIDE": "16", "EVAL_MAX_TOKENS": "512", "TTT_CHUNK_TOKENS": "128", "TTT_EPOCHS": "1",
    "TTT_LR": "0.01", "TTT_BUDGET_SECONDS": "0"}

DRIVER = '''
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="__main__")
import torch, kernels.reference, kernels.triton_ops  # the bundle's kernels, under Triton's interpreter on CPU
x = torch.randn(5, 48)
err = (kernels.triton_ops.rms_norm(x, 0.5) - kernels.reference.rms_norm(x, 0.5)).abs().max().item()
packages = ("common", "kernels", "model", "train", "quant", "eval", "pipelines")
modules = {n: [getattr(m, "__file__", None), type(m.__spec__.loader).__name__]
           for n, m in sys.modules.items() if n.split(".")[0] in packages}
json.dump({"modules": modules, "rms_norm_err": err, "sys_path": sys.path}, open(sys.argv[2], "w"))
'''


def third_party_path() -> list[str]:
    """The site-packages folders of the bundle's third-party imports, and nothing of the repository."""
    import numpy
    import sentencepiece
    import tqdm
    import triton
    import zstandard
    dirs = {Path(m.__file__).resolve().parents[1] for m in (torch, numpy, sentencepiece, tqdm, triton, zstandard)}
    assert REPO not in dirs
    return sorted(map(str, dirs))


def standalone_env(tmp_path: Path, corpus: Path, **extra) -> dict:
    """An environment where only third-party packages import, with a stand-in for Hugging Face's `kernels`
    package first on the path (it fails loudly if anything imports it)."""
    fake = tmp_path / "hf_site" / "kernels"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError('the installed kernels package was imported')\n")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": os.pathsep.join([str(fake.parent), *third_party_path()]), "DATA_PATH": str(corpus),
            **TINY_RUN, **extra}


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def submit_cli(argv, capsys) -> tuple[int, str, str]:
    import quant.__main__ as quant_cli
    code = quant_cli.main(["submit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_three_seeds_make_a_records_folder_whose_script_runs_alone(corpus, tmp_path, capsys, monkeypatch):
    import quant.__main__ as quant_cli
    from pipelines.challenge_main import main as challenge_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    script = tmp_path / "train_gpt.py"
    assert quant_cli.main(["bundle", "--preset", "tiny", "--out", str(script)]) == 0
    capsys.readouterr()
    defaults = read_bundle(script.read_text()).defaults
    assert defaults["train"]["max_wallclock_seconds"] == 600 and defaults["eval"]["ttt_budget_s"] == 600
    runs = {}
    for seed in SEEDS:
        runs[seed] = tmp_path / "runs" / f"seed{seed}"
        challenge_main(defaults, script, {**TINY_RUN, "DATA_PATH": str(corpus), "SEED": str(seed),
                                          "OUT_DIR": str(runs[seed])})
    capsys.readouterr()

    # the statistics, worked out here from the runs' own eval.json
    evals = [json.loads((runs[s] / "eval.json").read_text()) for s in SEEDS]
    losses, bpbs = [e["val_loss"] for e in evals], [e["val_bpb"] for e in evals]
    mean, sd = statistics.mean(losses), statistics.stdev(losses)
    baseline = mean + 0.005 + 10 * sd / math.sqrt(3)  # t = 10 with df = 2
    p = 0.5 - 10 / (2 * math.sqrt(2 + 100))           # the t(2) tail in closed form: 0.00494...
    records = tmp_path / "records" / "2026-12-03_Tiny"
    args = [*map(str, runs.values()), "--out", str(records), "--name", "Tiny", "--github-id", "tester",
            "--baseline-val-loss", repr(baseline), "--hardware", "8xH100 SXM"]
    code, out, err = submit_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["track"] == "non_record_16mb" and "recorded '1x CPU" in err

    sub = json.loads((records / "submission.json").read_text())
    assert sub["seeds"] == list(SEEDS) and set(sub["seed_results"]) == {str(s) for s in SEEDS}
    assert sub["val_loss"] == pytest.approx(mean, abs=1e-12) and sub["val_loss_std"] == pytest.approx(sd, rel=1e-9)
    assert sub["val_bpb"] == pytest.approx(statistics.mean(bpbs), abs=1e-12)
    assert sub["val_bpb_std"] == pytest.approx(statistics.stdev(bpbs), rel=1e-9)
    assert sub["significance"]["t"] == pytest.approx(10, rel=1e-6)
    assert sub["significance"]["p_value"] == pytest.approx(p, rel=1e-6) and sub["significance"]["significant"]
    assert sub["pytorch_version"] == torch.__version__ and sub["hardware"].startswith("1x CPU")
    assert sub["hardware_note"] == "8xH100 SXM" and sub["world_size"] == 1
    assert sub["compliance"]["hardware_8xh100"] is False and sub["compliance"]["train_under_600s"] is True
    assert sub["compliance"]["logs_from_train_gpt"] is True and sub["compliance"]["three_seeds"] is True

    # one code: the script that ran, its bytes everywhere; the logs it wrote, untouched
    code_bytes = script.stat().st_size
    assert (records / "train_gpt.py").read_bytes() == script.read_bytes() and sub["bytes_code"] == code_bytes
    for seed in SEEDS:
        log = (records / f"train_seed{seed}.log").read_bytes()
        assert log == (runs[seed] / "logs" / f"seed{seed}.txt").read_bytes()
        assert f"Code size: {code_bytes} bytes".encode() in log
        assert (records / f"seed{seed}" / "final_model.int6.ptz").read_bytes() == \
            (runs[seed] / "final_model.int6.ptz").read_bytes()
    readme = (records / "README.md").read_text()
    assert f"| {code_bytes:,} |" in readme and f"p = {p:.4g}" in readme and "Non-record track" in readme
    assert "Warning: --hardware says '8xH100 SXM'" in readme and "SEED=8 " in readme
    assert "zstandard" in readme and "Hugging Face's `kernels`" in readme

    # the readable twin holds the same modules and defaults; the README's decode script recovers them
    twin, packed = read_bundle((records / "train_gpt_plain.py").read_text()), read_bundle(script.read_text())
    assert not twin.compressed and packed.compressed
    assert twin.sources == packed.sources and twin.defaults == packed.defaults
    decode_dir = tmp_path / "decode"
    decode_dir.mkdir()
    shutil.copy(records / "train_gpt.py", decode_dir)
    subprocess.run([sys.executable, "-S", "-c", DECODE_SCRIPT], cwd=decode_dir, check=True, timeout=60)
    for name, (is_package, source) in packed.sources.items():
        path = decode_dir / "train_gpt_modules" / Path(*name.split("."))
        path = path / "__init__.py" if is_package else path.with_name(path.name + ".py")
        assert path.read_text() == source, name

    # refusals: nothing written
    (tmp_path / "bad").mkdir()
    tampered = shutil.copytree(runs[SEEDS[1]], tmp_path / "bad" / "config")
    info = json.loads((tampered / "run_info.json").read_text())
    info["settings"]["train"]["steps"] = 99
    (tampered / "run_info.json").write_text(json.dumps(info))
    other = tmp_path / "records" / "other"
    for bad_runs, message in (([runs[7], tampered], "differ beyond the seed: train.steps 3 (seed 7) vs 99"),
                              ([runs[7], runs[7]], "two runs share a seed")):
        code, _, err = submit_cli([*map(str, bad_runs), "--out", str(other), "--name", "x", "--github-id", "t"],
                                  capsys)
        assert code == 1 and message in err, err
    (tampered / "train_gpt.py").write_text("print('edited')\n")
    code, _, err = submit_cli([str(tampered), "--out", str(other), "--name", "x", "--github-id", "t"], capsys)
    assert code == 1 and "is not the script that ran" in err
    code, _, err = submit_cli([*args, "--track", "10min_16mb", "--overwrite"], capsys)
    assert code == 1 and "not within the 10-minute track: 8xH100" in err
    code, _, err = submit_cli([*args[:3], "--out", str(other), *args[5:], "--cap", "1000"], capsys)
    assert code == 1 and "over the 1,000-byte cap" in err
    code, _, err = submit_cli(args, capsys)
    assert code == 1 and "already exists" in err
    assert not other.exists()

    # the folder's train_gpt.py, from a copy, without the package: plain python, then torchrun on 2 ranks
    copy = shutil.copytree(records, tmp_path / "copy")
    before = snapshot(copy)
    (tmp_path / "driver.py").write_text(DRIVER)
    env = standalone_env(tmp_path, corpus, SEED=str(SEEDS[0]))
    proc = subprocess.run([sys.executable, "-S", str(tmp_path / "driver.py"), "train_gpt.py",
                           str(tmp_path / "check.json")], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["modules"] and all(loader == "_Bundle" and file.startswith(str(copy / "train_gpt.py") + "/")
                                    for file, loader in check["modules"].values())
    assert not any(p and Path(p).resolve() == REPO for p in check["sys_path"]) and check["rms_norm_err"] < 1e-5
    alone = copy / "runs" / f"seed{SEEDS[0]}"
    assert (alone / "final_model.int6.ptz").read_bytes() == (runs[SEEDS[0]] / "final_model.int6.ptz").read_bytes()
    assert json.loads((alone / "eval.json").read_text())["val_bpb"] == pytest.approx(evals[0]["val_bpb"], rel=1e-6)

    torchrun = [sys.executable, "-S", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "--no-python", sys.executable, "-S", "train_gpt.py"]
    proc = subprocess.run(torchrun, cwd=copy, env={**env, "RUN_ID": "two_ranks"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (copy / "runs" / "two_ranks" / "logs" / "two_ranks.txt").read_text()
    assert "world_size:2" in log and "grad_accum:1" in log and "legal_ttt_exact" in log
    assert proc.stdout.count("step:3/3 train_loss:") == 1  # rank 0 alone prints
    assert json.loads((copy / "runs" / "two_ranks" / "run_info.json").read_text())["world_size"] == 2

    after = snapshot(copy)
    assert {k: v for k, v in after.items() if not k.startswith("runs/")} == before
    assert set(os.listdir(copy)) == {*os.listdir(records), "runs"}

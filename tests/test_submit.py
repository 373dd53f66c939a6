"""`python -m quant submit`: the records folder, and its train_gpt.py run standalone against the package's CLIs.

The end-to-end test trains, quantizes and evaluates with the package's own CLIs (in-process, CPU), writes the
records folder, then runs that folder's train_gpt.py in a fresh interpreter that cannot see the repository
(`python -S`, only the third-party site-packages on PYTHONPATH, cwd outside the repo) with the same settings,
and compares the figures: same losses to fp32 tolerance, the same artifact bytes.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quant.bundle import BundleError, find_modules, strip_source
from train.challenge_env import settings_from_env

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = dict(model_dim=64, mlp_hidden=128, seq_len=32, rope_train_seq_len=32, bigram_dim=32, ve_dim=32)
EVAL_FLAGS = ["--stride", "16", "--max-tokens", "512", "--ttt", "--ttt-chunk", "128", "--ttt-epochs", "1",
              "--ttt-lr", "0.01", "--no-progress"]

DRIVER = '''
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="__main__")
import torch, kernels.reference, kernels.triton_ops  # the bundle's kernels, under Triton's interpreter on CPU
x = torch.randn(5, 48)
err = (kernels.triton_ops.rms_norm(x, 0.5) - kernels.reference.rms_norm(x, 0.5)).abs().max().item()
packages = ("kernels", "model", "train", "quant", "eval")
modules = {n: [getattr(m, "__file__", None), type(m.__spec__.loader).__name__]
           for n, m in sys.modules.items() if n.split(".")[0] in packages}
json.dump({"modules": modules, "rms_norm_err": err, "sys_path": sys.path}, open(sys.argv[2], "w"))
'''


def tiny_defaults(**train):
    from model.config import get_config
    from train.config import get_train_config
    return {"train": get_train_config("tiny", **train).to_dict(), "model": get_config("tiny").to_dict()}


def test_environment_variables_override_the_run_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data/tokenizers here: the tokenizer defaults to DATA_PATH/tokenizer.model
    s = settings_from_env(tiny_defaults(), {
        "ITERATIONS": "7", "SEED": "3", "TRAIN_SEQ_LEN": "64", "VE_LAYERS": "1,3", "LN_SCALE": "false",
        "TIED_EMBED_LR": "0.01", "DECODER_LR_MULT": "1.5", "TTT_ENABLED": "0", "EVAL_STRIDE": "32",
        "DATA_PATH": "/data/x", "UNRELATED": "ignored"})
    assert (s.train.steps, s.train.seed, s.train.tok_lr, s.train.decoder_lr_mult) == (7, 3, 0.01, 1.5)
    assert (s.model.seq_len, s.model.ve_layers, s.model.ln_scale) == (64, (1, 3), False)
    assert (s.eval.ttt, s.eval.stride) == (False, 32)
    assert s.tokenizer_path == Path("/data/x/tokenizer.model") and s.run_id == "seed3"
    with pytest.raises(ValueError, match="ITERATIONS='seven': expected int"):
        settings_from_env(tiny_defaults(), {"ITERATIONS": "seven"})
    with pytest.raises(ValueError, match="TTT_ENABLED='maybe': expected bool"):
        settings_from_env(tiny_defaults(), {"TTT_ENABLED": "maybe"})
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        settings_from_env(tiny_defaults(), {"MODEL_DIM": "130"})


def test_bundle_entry_reports_bad_input_in_one_line(tmp_path, capsys):
    from pipelines.challenge_main import main
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_defaults(), environ={"SEED": "one"})
    assert exit_info.value.code == 1 and capsys.readouterr().err.strip() == "error: SEED='one': expected int"
    with pytest.raises(SystemExit):
        main(tiny_defaults(), environ={"DATA_PATH": str(tmp_path / "nowhere"), "OUT_DIR": str(tmp_path / "o")})
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nowhere" in err


def test_strip_source_drops_docstrings_and_comments():
    source = '"""Module doc.\n\nMore."""\n# a comment\nclass A:\n    """Only a docstring."""\n\n\n' \
             'def f(x):  # trailing comment\n    """Doc."""\n    return x + 1  # why\n'
    stripped = strip_source(source)
    assert "doc" not in stripped.lower() and "#" not in stripped and len(stripped) < len(source) / 2
    namespace = {}
    exec(compile(stripped, "stripped", "exec"), namespace)
    assert namespace["f"](1) == 2 and namespace["f"].__doc__ is None and namespace["A"].__doc__ is None
    assert strip_source(source, keep_doc_line=True).startswith('"""Module doc."""\n')


def test_module_discovery_follows_string_imports_and_refuses_excluded_or_missing(tmp_path):
    modules, third_party = find_modules()
    assert {"kernels.triton_ops", "kernels.reference", "eval.ttt", "quant.artifact", "train.loop"} <= set(modules)
    assert not {"train.data.download", "train.data.tokenize_text", "quant.submit", "bench.__main__"} & set(modules)
    assert third_party["torch"] and third_party["sentencepiece"] and not third_party["matplotlib"]  # plots: optional
    for pkg in ("common", "train", "kernels", "model", "quant", "eval", "pipelines"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "pipelines" / "challenge_main.py").write_text("from train import nope\nimport train.missing\n")
    with pytest.raises(BundleError, match="pipelines.challenge_main imports train.missing, which is not a module"):
        find_modules(root=tmp_path)
    (tmp_path / "pipelines" / "challenge_main.py").write_text("import pipelines.demo\n")
    (tmp_path / "pipelines" / "demo.py").write_text("")
    with pytest.raises(BundleError, match="imports pipelines.demo, which is kept out of train_gpt.py"):
        find_modules(root=tmp_path)


def bundle_table(text: str) -> dict:
    """The module table M of a train_gpt.py, read back without running it."""
    import ast
    import base64
    import lzma
    value = next(node.value for node in ast.parse(text).body
                 if isinstance(node, ast.Assign) and node.targets[0].id == "M")
    if isinstance(value, ast.Dict):  # --plain: {name: (is_package, source)}
        return {k: [p, src] for k, (p, src) in ast.literal_eval(value).items()}
    packed = value.args[0].args[0].args[0].value  # json.loads(lzma.decompress(base64.b85decode('...')))
    return json.loads(lzma.decompress(base64.b85decode(packed)))


def test_plain_and_compressed_bundles_hold_the_same_stripped_modules():
    from quant.bundle import build_bundle
    defaults = {**tiny_defaults(), "eval": {}}
    packed, plain = build_bundle(defaults), build_bundle(defaults, compress=False)
    table = bundle_table(packed.text)
    assert table == bundle_table(plain.text) and sorted(table) == packed.modules
    assert packed.code_bytes < plain.code_bytes / 2 and plain.code_bytes < packed.source_bytes
    assert all('"""' not in src for _, src in table.values() if "__doc__" not in src)


def third_party_path() -> str:
    """PYTHONPATH with the site-packages folders of the bundle's third-party imports, and nothing of the repo."""
    import numpy
    import sentencepiece
    import tqdm
    import triton
    import zstandard
    dirs = {Path(m.__file__).resolve().parents[1] for m in (torch, numpy, sentencepiece, tqdm, triton, zstandard)}
    assert REPO not in dirs
    return os.pathsep.join(sorted(map(str, dirs)))


def run_cli(main, argv, capsys) -> dict:
    """Run a CLI's main in-process; its last stdout line, as JSON."""
    main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_records_folder_bundle_runs_standalone_and_matches_the_cli(corpus, tmp_path, capsys, monkeypatch):
    import eval.__main__ as eval_cli
    import quant.__main__ as quant_cli
    import train.__main__ as train_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU comparison on any machine
    run = tmp_path / "run"
    train_args = ["--preset", "tiny", "--data", str(corpus), "--out", str(run), "--steps", "4", "--batch-tokens",
                  "128", "--val-every", "2", "--val-max-tokens", "256", "--no-progress"]
    train_args += [f"--model={k}={v}" for k, v in SMALL_MODEL.items()]
    trained = run_cli(train_cli.main, train_args, capsys)
    assert quant_cli.main([str(run / "final_model.pt"), "--out", str(run / "model.tgz"),
                           "--eval-data", str(corpus), "--eval-tokens", "256"]) == 0
    (run / "quant.log").write_text(capsys.readouterr().out)
    evaluated = run_cli(eval_cli.main, [str(run / "model.tgz"), "--data", str(corpus), "--json",
                                        str(run / "eval.json"), *EVAL_FLAGS], capsys)
    quantized = json.loads((run / "quant.log").read_text().strip().splitlines()[-1])

    records = tmp_path / "records" / "2026-01-01_Test"
    submit = ["submit", str(run), "--out", str(records), "--name", "Tiny test", "--github-id", "tester",
              "--hardware", "CPU test"]
    result = run_cli(quant_cli.main, submit, capsys)
    names = set(os.listdir(records))
    assert {"train_gpt.py", "final_model.int6.ptz", "README.md", "submission.json", "requirements.txt",
            "train_seed42.log", "metrics.jsonl", "eval.json", "quant.log"} <= names
    code_bytes = (records / "train_gpt.py").stat().st_size
    assert result["total_bytes"] == code_bytes + (run / "model.tgz").stat().st_size
    assert result["headroom_bytes"] == 16_000_000 - result["total_bytes"] and result["ok"]
    sub = json.loads((records / "submission.json").read_text())
    assert sub["github_id"] == "tester" and sub["val_bpb"] == evaluated["val_bpb"]
    assert sub["pre_ttt_val_bpb"] == evaluated["pre_ttt_val_bpb"] and sub["bytes_total"] == result["total_bytes"]
    readme = (records / "README.md").read_text()
    assert f"| {code_bytes:,} |" in readme and f"{evaluated['val_bpb']:.4f}" in readme
    assert "legal score-first" in readme and "CPU test" in readme
    assert {line.split()[0] for line in (records / "requirements.txt").read_text().splitlines()} >= {
        "torch", "triton", "numpy", "sentencepiece", "zstandard"}
    rendered = (records / "train_seed42.log").read_text()
    assert "step:4/4 train_loss:" in rendered and "legal_ttt_exact val_loss:" in rendered

    assert quant_cli.main(submit) == 1 and "already exists" in capsys.readouterr().err
    assert quant_cli.main([*submit[:3], str(tmp_path / "over"), *submit[4:], "--cap", "1000"]) == 1
    assert "over the 1,000-byte cap" in capsys.readouterr().err and not (tmp_path / "over").exists()
    (tmp_path / "float_eval.json").write_text(json.dumps({"kind": "model_file", "val_bpb": 1.0}))
    assert quant_cli.main([*submit[:3], str(tmp_path / "x"), *submit[4:], "--eval-json",
                           str(tmp_path / "float_eval.json")]) == 1
    assert "not the artifact" in capsys.readouterr().err

    # the records folder's train_gpt.py, alone: same settings through the challenge's environment variables
    out = tmp_path / "bundle_run"
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": third_party_path(),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DATA_PATH": str(corpus), "OUT_DIR": str(out),
           "ITERATIONS": "4", "SEED": "42", "EVAL_MAX_TOKENS": "512"}
    proc = subprocess.run([sys.executable, "-S", str(tmp_path / "driver.py"), "train_gpt.py",
                           str(tmp_path / "check.json")], cwd=records, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((tmp_path / "check.json").read_text())
    bundle_file = str(records / "train_gpt.py")
    assert check["modules"] and all(loader == "_Bundle" and file.startswith(bundle_file + "/")
                                    for file, loader in check["modules"].values())
    assert not any(p and Path(p).resolve() == REPO for p in check["sys_path"])
    assert check["rms_norm_err"] < 1e-5

    def metrics(folder):
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    for ours, theirs in zip(metrics(out), metrics(run), strict=True):
        for key in ("train_loss", "val_loss", "val_bpb", "ema_val_loss", "ema_val_bpb"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (key, ours, theirs)
    artifact = (out / "final_model.int6.ptz").read_bytes()
    assert hashlib.sha256(artifact).digest() == hashlib.sha256((run / "model.tgz").read_bytes()).digest()
    bundle_quant = json.loads((out / "quant.json").read_text())
    assert bundle_quant["code_bytes"] == code_bytes
    assert bundle_quant["quant_val_bpb"] == pytest.approx(quantized["quant_val_bpb"], rel=1e-5)
    bundle_eval = json.loads((out / "eval.json").read_text())
    for key in ("val_loss", "val_bpb", "pre_ttt_val_bpb"):
        assert bundle_eval[key] == pytest.approx(evaluated[key], rel=1e-5), key
    log = (out / "logs" / "seed42.txt").read_text()
    assert "step:4/4 train_loss:" in log and "step:2/4 val_loss:" in log
    assert f"final_int6_zstd-22_roundtrip_exact val_loss:{bundle_quant['quant_val_loss']:.8f}" in log
    assert f"legal_ttt_exact val_loss:{bundle_eval['val_loss']:.8f} val_bpb:{bundle_eval['val_bpb']:.8f}" in log
    assert trained["step"] == 4
    # a bundle run is itself a finished run: its own challenge log and hardware go into the next folder
    again = tmp_path / "records" / "again"
    assert quant_cli.main(["submit", str(out), "--out", str(again), "--name", "Again", "--github-id", "tester"]) == 0
    assert (again / "train_seed42.log").read_text() == log and "1x CPU" in (again / "README.md").read_text()

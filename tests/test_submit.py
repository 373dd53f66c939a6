"""`python -m quant submit` and the bundled train_gpt.py's pieces: settings from the environment, errors, world
sizes, module discovery, stripping and reading a bundle back, and a records folder from a package run.

The honest path (train_gpt.py runs of three seeds, the folder's script run standalone) is tests/test_records_folder.py.
"""
import json
from pathlib import Path

import pytest
import torch

from quant.bundle import BundleError, find_modules, read_bundle, render, strip_source, third_party_imports
from train.challenge_env import fit_to_world, settings_from_env

SMALL_MODEL = dict(model_dim=64, mlp_hidden=128, seq_len=32, rope_train_seq_len=32, bigram_dim=32, ve_dim=32)
EVAL_FLAGS = ["--stride", "16", "--max-tokens", "512", "--ttt", "--ttt-chunk", "512", "--ttt-epochs", "1",
              "--ttt-lr", "0.01", "--no-progress"]


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
    assert s.out_dir == Path("runs/seed3") and "UNRELATED" not in s.env and s.env["SEED"] == "3"
    timed = settings_from_env(tiny_defaults(), {"TTT_BUDGET_SECONDS": "540", "MAX_WALLCLOCK_SECONDS": "600",
                                                "GRAD_ACCUM": "2", "EVAL_SKIP_BASELINE": "1", "OUT_DIR": "o"})
    assert (timed.eval.ttt_budget_s, timed.train.max_wallclock_seconds, timed.train.grad_accum) == (540, 600, 2)
    argv = timed.eval.eval_argv(budget_left_s=500.0)
    assert argv[argv.index("--ttt-budget-s") + 1] == "500.0" and "--skip-baseline" in argv
    assert timed.out_dir == Path("o")
    with pytest.raises(ValueError, match="ITERATIONS='seven': expected int"):
        settings_from_env(tiny_defaults(), {"ITERATIONS": "seven"})
    with pytest.raises(ValueError, match="TTT_ENABLED='maybe': expected bool"):
        settings_from_env(tiny_defaults(), {"TTT_ENABLED": "maybe"})
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        settings_from_env(tiny_defaults(), {"MODEL_DIM": "130"})


def test_bundle_entry_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    import pipelines.challenge_main as challenge_main
    main = challenge_main.main
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_defaults(), environ={"SEED": "one"})
    assert exit_info.value.code == 1 and capsys.readouterr().err.strip() == "error: SEED='one': expected int"
    with pytest.raises(SystemExit):
        main(tiny_defaults(), environ={"DATA_PATH": str(tmp_path / "nowhere"), "OUT_DIR": str(tmp_path / "o")})
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nowhere" in err
    occupied = tmp_path / "records"  # e.g. the records folder itself, with OUT_DIR=.
    occupied.mkdir()
    (occupied / "train_gpt.py").write_text("# the submitted script\n")
    with pytest.raises(SystemExit):
        main(tiny_defaults(), environ={"OUT_DIR": str(occupied)})
    assert "already holds train_gpt.py" in capsys.readouterr().err
    assert (occupied / "train_gpt.py").read_text() == "# the submitted script\n" and len(list(occupied.iterdir())) == 1
    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks: quiet while rank 0 reports; their own error later
    monkeypatch.setattr(challenge_main, "OTHER_RANK_GRACE_S", 0.0)
    with pytest.raises(SystemExit):
        main(tiny_defaults(), environ={"SEED": "one"})
    assert capsys.readouterr().err.strip() == "error: rank 1: SEED='one': expected int"


@pytest.mark.parametrize("preset", ["seed", "tiny"])
def test_grad_accumulation_fits_every_world_size_from_1_to_8(preset):
    from model.config import get_config
    from train.config import get_train_config
    tcfg = get_train_config(preset)
    seq_len = get_config(tcfg.model_preset).seq_len
    for world in range(1, 9):
        fitted, note = fit_to_world(tcfg, seq_len, world)
        assert fitted.batch_tokens % (world * fitted.grad_accum * seq_len) == 0, world
        assert fitted.grad_accum >= -(-tcfg.accum_total // world)  # micro-batches no larger than the preset's
        if tcfg.batch_tokens % (world * seq_len) == 0:
            assert note is None and fitted.batch_tokens == tcfg.batch_tokens
        else:  # 384 sequences on 5 or 7 ranks: the batch rounds down, and the note says so
            assert note and fitted.batch_tokens < tcfg.batch_tokens and str(fitted.batch_tokens) in note
    seed = get_train_config("seed")
    assert [fit_to_world(seed, 2048, w)[0].grad_accum for w in (1, 2, 3, 4, 8)] == [8, 4, 4, 2, 1]
    assert fit_to_world(seed, 2048, 5)[0].batch_tokens == 380 * 2048
    given = get_train_config("seed", grad_accum=3)
    assert fit_to_world(given, 2048, 2) == (given, None)  # GRAD_ACCUM as set


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
    parts = read_bundle(packed.text)  # read back: the same text renders again, byte for byte
    assert parts.compressed and parts.defaults == json.loads(json.dumps(defaults))
    assert render(parts.sources, parts.defaults, parts.header, compress=True) == packed.text
    assert third_party_imports(parts.sources) == find_modules()[1]
    with pytest.raises(BundleError, match="not a train_gpt.py"):
        read_bundle("print('hello')\n")


def run_cli(main, argv, capsys) -> dict:
    """Run a CLI's main in-process; its last stdout line, as JSON."""
    main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_records_folder_from_a_package_run(corpus, tmp_path, capsys, monkeypatch):
    """A package run (python -m train, quant, eval) still makes a folder, honestly labelled: the log rendered
    and marked, not within the 10-minute track, a TTT that could not adapt said to have changed nothing."""
    import eval.__main__ as eval_cli
    import quant.__main__ as quant_cli
    import train.__main__ as train_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    train_args = ["--preset", "tiny", "--data", str(corpus), "--out", str(run), "--steps", "3", "--batch-tokens",
                  "128", "--val-every", "0", "--val-max-tokens", "256", "--no-progress"]
    train_args += [f"--model={k}={v}" for k, v in SMALL_MODEL.items()]
    run_cli(train_cli.main, train_args, capsys)
    assert quant_cli.main([str(run / "final_model.pt"), "--out", str(run / "model.tgz"),
                           "--eval-data", str(corpus), "--eval-tokens", "256"]) == 0
    (run / "quant.log").write_text(capsys.readouterr().out)
    evaluated = run_cli(eval_cli.main, [str(run / "model.tgz"), "--data", str(corpus), "--json",
                                        str(run / "eval.json"), *EVAL_FLAGS], capsys)
    assert evaluated["ttt"]["chunks"] == 1  # 512 targets, one 512-token chunk: never trained on

    records = tmp_path / "records" / "2026-01-01_Test"
    submit = ["submit", str(run), "--out", str(records), "--name", "Tiny test", "--github-id", "tester",
              "--hardware", "CPU test"]
    result = run_cli(quant_cli.main, submit, capsys)
    names = {p.relative_to(records).as_posix() for p in records.rglob("*") if p.is_file()}
    assert {"train_gpt.py", "train_gpt_plain.py", "README.md", "submission.json", "requirements.txt",
            "train_seed42.log", "seed42/final_model.int6.ptz", "seed42/metrics.jsonl", "seed42/eval.json"} <= names
    assert "quant.log" not in {Path(n).name for n in names}  # it counts the package's files, not train_gpt.py
    code_bytes = (records / "train_gpt.py").stat().st_size
    assert result["code_bytes"] == code_bytes and not result["by_script"] and result["track"] == "non_record_16mb"
    assert result["totals"]["42"] == code_bytes + (run / "model.tgz").stat().st_size
    sub = json.loads((records / "submission.json").read_text())
    assert sub["github_id"] == "tester" and sub["val_bpb"] == evaluated["val_bpb"] and sub["val_bpb_std"] is None
    assert sub["seed_results"]["42"]["pre_ttt_val_loss"] == evaluated["pre_ttt_val_loss"]
    assert sub["bytes_code"] == code_bytes and sub["hardware"] == "not recorded"
    assert sub["compliance"]["logs_from_train_gpt"] is False and sub["compliance"]["hardware_8xh100"] is None
    assert sub["significance"]["p_value"] is None and sub["pytorch_version"] is None
    readme = (records / "README.md").read_text()
    assert f"| {code_bytes:,} |" in readme and f"{evaluated['val_bpb']:.4f}" in readme
    assert "(one chunk: no adaptation ran)" in readme and "no adaptation ran" in readme.split("## Compliance")[1]
    assert f"| {evaluated['pre_ttt_val_bpb']:.4f} |" in readme  # the sliding row, measured
    assert "rendered afterwards" in readme and "Submitter's note (`--hardware`): CPU test" in readme
    assert "cannot be checked: no run recorded its hardware" in readme
    assert {line.split()[0] for line in (records / "requirements.txt").read_text().splitlines()} >= {
        "torch", "triton", "numpy", "sentencepiece", "zstandard"}
    rendered = (records / "train_seed42.log").read_text()
    assert rendered.startswith("# rendered by") and "not a log written by train_gpt.py" in rendered.splitlines()[0]
    assert "step:3/3 train_loss:" in rendered and "legal_ttt_exact val_loss:" in rendered
    assert f"Code size: {code_bytes} bytes" in rendered
    assert f"final_int6_sliding_window_exact val_loss:{evaluated['pre_ttt_val_loss']:.8f}" in rendered

    assert quant_cli.main(submit) == 1 and "already exists" in capsys.readouterr().err
    (tmp_path / "float_eval.json").write_text(json.dumps({"kind": "model_file", "val_bpb": 1.0}))
    assert quant_cli.main([*submit[:3], str(tmp_path / "x"), *submit[4:], "--eval-json",
                           str(tmp_path / "float_eval.json")]) == 1
    assert "not the artifact" in capsys.readouterr().err
    assert quant_cli.main([*submit[:2], str(run), *submit[2:3], str(tmp_path / "x"), *submit[4:],
                           "--eval-json", str(run / "eval.json")]) == 1
    assert "name one run's files" in capsys.readouterr().err and not (tmp_path / "x").exists()

"""quant.schemes (scheme choice, int6 GPTQ-lite, int8), quant.size and the `python -m quant` CLI, on tiny tensors."""
import json

import pytest
import torch

from quant.schemes import (CLIP_PERCENTILES_PER_ROW, CLIP_PERCENTILES_PER_TENSOR, DEFAULT_SCALE_FLOOR,
                           _row_quantiles, choose_scheme, dequantize, quantize_int6_per_row,
                           quantize_int8_per_tensor, quantize_state_dict, quantize_tensor)
from quant.size import CAP_BYTES, code_bytes, default_code_files, size_summary


def seed_shapes() -> dict[str, tuple[int, ...]]:
    """The fixed parameter names and `seed` shapes (shared interface; 27,030,108 parameters)."""
    shapes = {"tok_emb.weight": (1024, 512), "bigram.embed.weight": (2048, 128), "bigram.proj.weight": (512, 128),
              "bigram.scale": (), "smear.gate": (512,), "skip_weights": (5, 512), "skip_gates": (5, 512),
              "value_embed.embed.weight": (1024, 128), "value_embed.proj.weight": (256, 128),
              "value_embed.scale": (), "value_embed.layer_scales": (2,)}
    for i in range(11):
        p = f"blocks.{i}."
        shapes.update({p + "resid_mix": (2, 512), p + "attn_scale": (512,), p + "mlp_scale": (512,),
                       p + "attn.q.weight": (512, 512), p + "attn.k.weight": (256, 512),
                       p + "attn.v.weight": (256, 512), p + "attn.o.weight": (512, 512), p + "attn.q_gain": (8,),
                       p + "mlp.up.weight": (1536, 512), p + "mlp.down.weight": (512, 1536),
                       p + "mlp.alpha": (1536,), p + "mlp.beta": (1536,)})
    return shapes


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_seed_scheme_assignment_matches_the_spec():
    shapes = seed_shapes()
    assert sum(numel(s) for s in shapes.values()) == 27_030_108
    schemes = {n: choose_scheme(n, torch.empty(s, device="meta")) for n, s in shapes.items()}
    by = lambda sch: sorted(n for n, s in schemes.items() if s == sch)  # noqa: E731
    assert len(by("int6_per_row")) == 66
    assert by("int8_per_tensor") == ["bigram.embed.weight", "tok_emb.weight", "value_embed.embed.weight"]
    assert by("fp16") == sorted(f"blocks.{i}.mlp.{a}" for i in range(11) for a in ("alpha", "beta"))
    assert "bigram.proj.weight" in by("fp32") and "value_embed.proj.weight" in by("fp32")
    # seed-spec §5.2 payload: int6 values + fp16 row scales + int8 values + fp16 scalar scales + passthrough
    per_scheme = {"int6_per_row": lambda s: numel(s) + 2 * s[0], "int8_per_tensor": lambda s: numel(s) + 2,
                  "fp32": lambda s: 4 * numel(s), "fp16": lambda s: 2 * numel(s)}
    payload = sum(per_scheme[schemes[n]](s) for n, s in shapes.items())
    assert payload == 27_522_422
    assert sum(per_scheme["fp32"](s) for n, s in shapes.items() if schemes[n] == "fp32") == 506_224


def test_non_float_tensors_pass_through_raw():
    assert choose_scheme("blocks.0.attn.q.weight", torch.zeros(4, 4, dtype=torch.int64)) == "raw"


def test_row_quantiles_match_torch_quantile():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 37, generator=g).abs()
    s = a.sort(dim=1).values
    for p in (0.0, 0.5, 0.99, 0.99993, 1.0):
        torch.testing.assert_close(_row_quantiles(s, p), torch.quantile(a, p, dim=1), rtol=1e-6, atol=1e-6)


def rows_with_outliers(n=24, k=67, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.logspace(-3, 0.5, n)[:, None]  # some rows below, some above the floor
    w[::3, 5] *= 25.0  # outliers make clipping worthwhile
    return w


@pytest.mark.parametrize("clip", ["per-row", "per-tensor"])
def test_int6_values_within_half_a_step(clip):
    w = rows_with_outliers()
    q, s, stats = quantize_int6_per_row(w, clip=clip)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (w.shape[0],)
    assert int(q.min()) >= -32 and int(q.max()) <= 31
    s32 = s.float()[:, None]
    assert bool((s32 >= DEFAULT_SCALE_FLOOR * (1 - 1e-3)).all())
    deq = q.float() * s32
    inside = (w >= -32 * s32) & (w <= 31 * s32)
    err = (w - deq).abs()
    assert bool((err[inside] <= (s32 / 2 * (1 + 1e-5)).expand_as(w)[inside]).all())
    assert 0.0 < stats["floor_fraction"] < 1.0


def brute_force_row_errors(w, percentiles, floor):
    errs = []
    for p in percentiles:
        c = torch.quantile(w.abs(), p, dim=1)
        s = torch.clamp(c / 31, min=floor).to(torch.float16).float()
        q = torch.clamp(torch.round(w / s[:, None]), -32, 31)
        errs.append(((w - q * s[:, None]) ** 2).sum(dim=1))
    return torch.stack(errs)  # (num_percentiles, rows)


def test_per_row_search_keeps_each_rows_best_candidate():
    w = rows_with_outliers(seed=1)
    q, s, _ = quantize_int6_per_row(w, clip="per-row")
    got = ((w - q.float() * s.float()[:, None]) ** 2).sum(dim=1)
    best = brute_force_row_errors(w, CLIP_PERCENTILES_PER_ROW, DEFAULT_SCALE_FLOOR).min(dim=0).values
    torch.testing.assert_close(got, best, rtol=1e-5, atol=1e-9)


def test_per_tensor_mode_is_the_seeds_rule_and_per_row_is_never_worse():
    w = rows_with_outliers(seed=2)
    q, s, stats = quantize_int6_per_row(w, clip="per-tensor")
    errs = brute_force_row_errors(w, CLIP_PERCENTILES_PER_TENSOR, DEFAULT_SCALE_FLOOR).sum(dim=1)
    best_p = CLIP_PERCENTILES_PER_TENSOR[int(errs.argmin())]
    assert stats["percentile_counts"] == {str(best_p): w.shape[0]}
    c = torch.quantile(w.abs(), best_p, dim=1)
    expected_s = torch.clamp(c / 31, min=DEFAULT_SCALE_FLOOR).to(torch.float16)
    assert torch.equal(s, expected_s)
    per_row_mse = quantize_int6_per_row(w, clip="per-row")[2]["mse"]
    assert per_row_mse <= stats["mse"] * (1 + 1e-6)


def test_scale_floor_fires_on_small_rows_only():
    g = torch.Generator().manual_seed(3)
    small = torch.randn(4, 64, generator=g) * 1e-3
    q, s, stats = quantize_int6_per_row(small, percentiles=(1.0,))
    assert stats["floor_fraction"] == 1.0
    assert torch.equal(s, torch.full((4,), 1 / 31).to(torch.float16))
    big = torch.randn(4, 64, generator=g) * 5
    _, s_big, stats_big = quantize_int6_per_row(big, percentiles=(1.0,))
    assert stats_big["floor_fraction"] == 0.0
    assert torch.equal(s_big, (big.abs().amax(dim=1) / 31).to(torch.float16))
    _, s_low, stats_low = quantize_int6_per_row(small, percentiles=(1.0,), scale_floor=1e-7)
    assert stats_low["floor_fraction"] == 0.0 and float(s_low.float().max()) < 1e-3


def test_int6_bad_arguments():
    with pytest.raises(ValueError, match="clip mode"):
        quantize_int6_per_row(torch.zeros(2, 2), clip="per-column")
    with pytest.raises(ValueError, match="2-D"):
        quantize_int6_per_row(torch.zeros(4))
    with pytest.raises(ValueError, match="positive"):
        quantize_int6_per_row(torch.zeros(2, 2), scale_floor=0.0)
    with pytest.raises(ValueError, match="percentiles"):
        quantize_int6_per_row(torch.zeros(2, 2), percentiles=(1.5,))


def test_int8_per_tensor():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(300, 230, generator=g) * 0.02
    q, s = quantize_int8_per_tensor(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.dim() == 0
    assert float(s) == float(torch.tensor(float(w.abs().max()) / 127).to(torch.float16))
    assert int(q.abs().max()) <= 127
    assert float((w - q.float() * s.float()).abs().max()) <= float(s) / 2 * (1 + 1e-4) + 1e-7 * 127
    zq, zs = quantize_int8_per_tensor(torch.zeros(3, 3))
    assert float(zs) == 1.0 and not zq.any()


def test_dequantize_restores_dtype_and_shape():
    g = torch.Generator().manual_seed(5)
    emb = (torch.randn(600, 128, generator=g) * 0.01).to(torch.bfloat16)
    qt = quantize_tensor("tok_emb.weight", emb)
    assert qt.scheme == "int8_per_tensor"
    out = dequantize(qt)
    assert out.dtype == torch.bfloat16 and out.shape == emb.shape
    alpha = torch.randn(64, generator=g)
    qa = quantize_tensor("blocks.0.mlp.alpha", alpha)
    assert qa.scheme == "fp16" and dequantize(qa).dtype == torch.float32
    torch.testing.assert_close(dequantize(qa), alpha.half().float(), rtol=0, atol=0)
    gate = torch.randn(5, 8, generator=g)
    assert torch.equal(dequantize(quantize_tensor("skip_gates", gate)), gate)


def test_quantize_state_dict_is_sorted_and_rejects_bad_clip():
    sd = {"b": torch.ones(3), "a": torch.ones(2)}
    assert [qt.name for qt in quantize_state_dict(sd)] == ["a", "b"]
    with pytest.raises(ValueError, match="clip mode"):
        quantize_state_dict(sd, clip="nope")


def test_code_files_and_cap_verdict(tmp_path):
    files = default_code_files()
    names = {f.as_posix() for f in files}
    assert "quant/artifact.py" in names and "kernels/int6_layout.py" in names and "kernels/ops.py" in names
    assert "common/checkpoint.py" in names and "pipelines/challenge_main.py" in names
    assert "quant/__main__.py" not in names and "quant/size.py" not in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    (tmp_path / "a.py").write_text("x = 'é'\n", encoding="utf-8")
    assert code_bytes([tmp_path / "a.py"]) == len("x = 'é'\n".encode("utf-8"))
    with pytest.raises(FileNotFoundError, match="code file"):
        code_bytes([tmp_path / "missing.py"])
    assert size_summary(15_000_000, 1_000_000) == {
        "artifact_bytes": 15_000_000, "code_bytes": 1_000_000, "total_bytes": 16_000_000, "headroom_bytes": 0,
        "cap_bytes": CAP_BYTES, "ok": True}
    assert size_summary(15_000_000, 1_000_001)["ok"] is False


def tiny_state_dict():
    g = torch.Generator().manual_seed(6)
    return {"tok_emb.weight": torch.randn(520, 128, generator=g) * 0.02,
            "blocks.0.attn.q.weight": torch.randn(64, 64, generator=g) * 0.5,
            "blocks.0.mlp.alpha": torch.ones(96), "skip_weights": torch.ones(1, 64)}


def test_cli_writes_artifact_table_and_json(tmp_path, capsys):
    from quant.__main__ import main
    model_file = tmp_path / "final_model.pt"
    torch.save({"config": {"preset": "test"}, "model": tiny_state_dict()}, model_file)
    out = tmp_path / "model.tgolf"
    code = tmp_path / "train_gpt.py"
    code.write_text("print('hi')\n")
    rc = main([str(model_file), "--out", str(out), "--level", "3", "--code-files", str(code), "--compare-storage"])
    text = capsys.readouterr().out
    assert rc == 0
    result = json.loads(text.strip().splitlines()[-1])
    assert result["artifact_bytes"] == out.stat().st_size and result["code_bytes"] == 12
    assert result["total_bytes"] == result["artifact_bytes"] + 12 and result["ok"] is True
    assert set(result["artifact_bytes_by_int6_storage"]) == {"int8", "packed"}
    assert "blocks.0.attn.q.weight" in text and "int6_per_row" in text and "scale floor fires" in text
    # the bounds table follows the size table: tensor, scheme, bound, row bound, zstd-22, artifact, artifact/bound
    bounds = [line for line in text.splitlines() if line.startswith("blocks.0.attn.q.weight ")][-1]
    bound, row_bound, zstd22, coded = (float(v.replace(",", "")) for v in bounds.split()[2:6])
    assert 0 < bound < row_bound and coded <= 1.01 * bound and zstd22 > 0  # a 64x64 matrix: row tables cost more
    assert result["bound_bytes"] > 0 and result["artifact_over_bound"] == round(result["artifact_bytes"] /
                                                                                result["bound_bytes"], 4)
    assert result["seed_style_bytes"] > result["artifact_bytes"] and result["format2_bytes"] > 0
    assert result["format3_bytes"] >= result["artifact_bytes"] - 8  # width contexts only where they are smaller
    rc = main([str(model_file), "--out", str(out), "--level", "1", "--code-files", str(code), "--cap", "1000",
               "--overwrite"])
    assert rc == 1
    assert "over the 1,000-byte cap" in capsys.readouterr().err


def test_cli_counts_the_bundled_train_gpt_by_default(tmp_path, capsys):
    """Without --code-files the code bytes are those of the standalone train_gpt.py a submission ships (for the
    preset whose model config the file has), not the package's files."""
    from model.config import get_config
    from quant.__main__ import main
    from quant.bundle import build_bundle
    from quant.bundle_cli import preset_defaults
    from quant.size import default_code_files

    model_file = tmp_path / "final_model.pt"
    torch.save({"config": get_config("tiny").to_dict(), "model": tiny_state_dict()}, model_file)
    assert main([str(model_file), "--out", str(tmp_path / "m.tgolf"), "--level", "1", "--no-bounds"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text.strip().splitlines()[-1])
    bundled = build_bundle(preset_defaults("tiny", 600.0, 600.0)).code_bytes
    assert abs(result["code_bytes"] - bundled) <= 64  # the same file, up to its `git describe` header line
    assert result["code_bytes"] < code_bytes(default_code_files()) / 3
    assert "code counted: train_gpt.py as `python -m quant bundle --preset tiny` writes it" in text


def test_cli_rejects_a_file_without_config_and_model(tmp_path, capsys):
    from quant.__main__ import main
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.ones(2)}, bad)
    assert main([str(bad), "--out", str(tmp_path / "x.tgolf")]) == 1
    assert "'config' and 'model'" in capsys.readouterr().err and not (tmp_path / "x.tgolf").exists()


def test_fake_quant_int6_grid_matches_the_int6_quantizer_at_clip_1():
    """model.qat (written by the model engineer) must put weights on the exporter's grid with p = 1.0."""
    from model.qat import fake_quant_int6
    g = torch.Generator().manual_seed(7)
    # rows whose max is 31 * 2^-3: the scale 0.125 is exact in fp16, so the two grids must agree exactly
    w = torch.rand(8, 40, generator=g) * 7.75 - 3.875
    w[:, 0] = 3.875
    q, s, _ = quantize_int6_per_row(w, percentiles=(1.0,))
    torch.testing.assert_close(fake_quant_int6(w).detach().float(), q.float() * s.float()[:, None], rtol=0, atol=1e-6)
    # general rows: QAT uses the fp32 scale, the exporter the stored fp16 one; the integer grids must agree
    # except for rare values sitting half-way between two levels
    small = torch.randn(16, 40, generator=g) * 0.3
    q_small, _, _ = quantize_int6_per_row(small, percentiles=(1.0,))
    s32 = torch.clamp(small.abs().amax(dim=1, keepdim=True) / 31, min=1 / 31)
    q_qat = torch.round(fake_quant_int6(small).detach().float() / s32)
    assert int((q_qat - q_small.float()).abs().max()) <= 1
    assert float((q_qat == q_small.float()).float().mean()) >= 0.99


def test_quant_gap_scores_float_and_artifact_on_the_same_val_tokens(tmp_path, real_tokenizer):
    from model.config import get_config
    from model.gpt import GPT
    from quant.artifact import save_artifact
    from quant.roundtrip import quant_gap
    from common.shards import write_shard
    import numpy as np

    torch.manual_seed(0)
    cfg = get_config("tiny", seq_len=32)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.05)  # non-trivial weights so quantization matters
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model_file = tmp_path / "final_model.pt"
    torch.save({"config": cfg.to_dict(), "model": state}, model_file)
    artifact = tmp_path / "model.tgolf"
    save_artifact(state, cfg.to_dict(), artifact, level=1)
    tokens = np.random.default_rng(0).integers(4, 1024, size=4 * 32 + 7).astype(np.uint16)
    write_shard(tmp_path / "fineweb_val_000000.bin", tokens)

    result = quant_gap(model_file, artifact, tmp_path, real_tokenizer, batch_seqs=3)
    assert result["val_tokens"] == 4 * 32
    x = torch.from_numpy(tokens[:4 * 32].astype(np.int64)).reshape(4, 32)
    y = torch.from_numpy(tokens[1:4 * 32 + 1].astype(np.int64)).reshape(4, 32)
    model.eval()
    with torch.no_grad():
        assert abs(result["float_val_loss"] - float(model(x, y))) < 1e-4
    assert result["quant_gap_bpb"] == result["quant_val_bpb"] - result["float_val_bpb"]
    assert result["quant_val_bpb"] != result["float_val_bpb"] and abs(result["quant_gap_bpb"]) < 0.5

"""`torchrun -m eval --ttt` on 2 CPU ranks (gloo) == 1 process: windows and TTT sequences split across ranks, score
sums all-reduced, the flat gradient buffer averaged with one all-reduce, the budget's rates max-reduced."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_fineweb_val
from eval.__main__ import main
from model.config import get_config
from model.gpt import GPT

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=1024, num_layers=2, ve_layers=(1,), xsa_last_n=1, model_dim=64, num_heads=2, num_kv_heads=1,
            mlp_hidden=128, seq_len=32, rope_train_seq_len=32, bigram_buckets=64, bigram_dim=32, ve_dim=32)


@pytest.fixture
def model_and_data(tmp_path, real_tokenizer, fineweb_sample):
    write_fineweb_val(tmp_path, real_tokenizer, fineweb_sample, 32 * 20)
    torch.manual_seed(0)
    model = GPT(get_config("tiny", **TINY))
    with torch.no_grad():
        for _, linear in model.block_linears():
            linear.weight.normal_(0, 0.05)
    path = tmp_path / "model.pt"
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict()}, path)
    return path, tmp_path


@pytest.mark.slow
def test_two_rank_ttt_matches_one_process(model_and_data, tmp_path, capsys):
    model, data = model_and_data
    args = [str(model), "--data", str(data), "--stride", "16", "--batch", "4", "--max-tokens", "512", "--ttt",
            "--ttt-chunk", "128", "--ttt-lr", "0.02", "--ttt-freeze", "1", "--no-progress", "--cpu-threads", "1"]
    main(args + ["--ttt-epochs", "2"])
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=env.get("GLOO_SOCKET_IFNAME", "lo"), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "eval", *args, "--device", "cpu", "--ttt-budget-s", "1e9", "--ttt-max-epochs", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    ranks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ranks["world_size"] == 2 and ranks["ttt"]["ttt"]["epochs"] == 2 == ranks["ttt"]["budget"]["epochs"]
    assert ranks["plan"]["ttt"]["seqs_per_rank"] == 2 and ranks["plan"]["ttt_score"]["score_batches"] == 4
    for key in ("pre_ttt_val_bpb", "post_ttt_val_bpb"):
        assert ranks[key] == pytest.approx(single[key], rel=1e-5), key
    assert (ranks["ttt"]["tokens"], ranks["ttt"]["bytes"]) == (single["ttt"]["tokens"], single["ttt"]["bytes"])
    assert ranks["post_ttt_val_bpb"] != single["pre_ttt_val_bpb"]  # it adapted

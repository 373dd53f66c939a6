"""The CUDA autocast policy on the CPU (tests/cuda_autocast.py): every op family, the model, training, evaluation
and TTT under CUDA's autocast dtypes, for every kernel policy a CUDA run can get.

Before kernels/autocast.py's rule, the default compiled CUDA policy failed here exactly as on a GPU: the
Inductor-policy qk_norm_rope returned fp32 q, k (CUDA autocast runs rms_norm in fp32) beside a low-precision v.
The Triton policies run with fp16 as the low-precision dtype (the interpreter computes fp16 correctly, bf16
not; CUDA's lists are the same for both), the eager one with bf16.
"""
import pytest
import torch
import torch.nn.functional as F

from cuda_autocast import autocast_ops, cuda_autocast_policy
from eval.scoring import evaluate
from eval.ttt import TTTConfig, ttt_evaluate
from kernels.autocast import autocast_for
from kernels.ops import FAMILIES, KernelPolicy, default_kernels, get_ops
from model.config import get_config
from model.gpt import GPT
from kernels.int6_layout import pack_int6
from train.config import get_train_config
from train.loop import run_training

CPU = torch.device("cpu")
# (name, backend, overrides, low-precision dtype): every policy a CUDA run gets by default, and the eager one
POLICIES = [
    ("cuda-compiled-default", *default_kernels("cuda", True), torch.float16),
    ("cuda-eager-default", *default_kernels("cuda", False), torch.float16),
    ("eager", "eager", "", torch.bfloat16),
]
POLICY_IDS = [p[0] for p in POLICIES]


def test_emulation_applies_cuda_lists_and_is_undone():
    """rms_norm and pow run in fp32 on CUDA (not on the CPU), linear in the low-precision dtype; exit restores."""
    assert "aten::rms_norm" in autocast_ops("AutocastCUDA") and "aten::rms_norm" not in autocast_ops("AutocastCPU")
    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, 8)
    with cuda_autocast_policy(torch.bfloat16) as policy, autocast_for(CPU):
        y = F.rms_norm(x, (8,))
        assert (y.dtype, x.square().dtype, F.linear(x, w).dtype) == (torch.float32, torch.float32, torch.bfloat16)
        assert torch.softmax(x, -1).dtype == torch.float32 and torch.cat([x, w]).dtype == torch.float32
        y.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert {"aten.rms_norm.default", "aten.linear.default"} <= policy.probed_ops
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the CPU's own lists again
        assert F.rms_norm(x, (8,)).dtype == torch.bfloat16 and x.square().dtype == torch.bfloat16
    with autocast_for(CPU):
        assert not torch.is_autocast_enabled("cpu")


def _op_inputs(name: str, g: torch.Generator) -> tuple[tuple, dict]:
    """Inputs for op `name` in the mixed dtypes the model hands it under autocast (fp32 stream, fp16 branch)."""
    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)
    B, T, H, Hkv, D = 1, 8, 2, 1, 32
    cos, sin = r(T, 4), r(T, 4)
    if name == "attention":
        return (r(B, T, H, D), r(B, T, Hkv, D), r(B, T, Hkv, D, dtype=torch.float16)), {"xsa": True}
    if name == "exclusive_projection":
        return (r(B, T, H, D, dtype=torch.float16), r(B, T, Hkv, D)), {}
    if name in ("qk_norm_rope", "rotate_half_split"):
        extra = (r(H),) if name == "qk_norm_rope" else ()
        return (r(B, T, H, D, dtype=torch.float16), cos, sin, 8, *extra), {}
    if name == "rms_norm":
        return (r(3, 40, dtype=torch.float16),), {}
    if name == "residual_norm":
        return (r(3, 40),), dict(branch=r(3, 40, dtype=torch.float16), branch_scale=r(40), x0=r(3, 40), mix=r(2, 40))
    if name == "linear":
        return (r(3, 40), r(24, 40)), {}
    if name == "relu2_mlp":
        return (r(3, 40), r(48, 40), r(24, 48), r(48), r(48)), {}
    if name == "softcap_cross_entropy":
        return (r(3, 40), r(64, 40), torch.randint(0, 64, (3,), generator=g), 30.0), {}
    if name == "int6_linear":
        q = torch.randint(-32, 32, (24, 40), generator=g, dtype=torch.int8)
        return (r(3, 40), pack_int6(q), r(24).abs() + 0.01, 40), {}
    raise KeyError(name)


def _dtypes(out):
    return tuple(t.dtype for t in out) if isinstance(out, tuple) else out.dtype


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_eager_twin_returns_what_its_triton_op_returns(family):
    """The dtype rule at every op boundary: under CUDA's autocast dtypes, the eager twin (eager and inductor
    policies) and the Triton op take the same mixed inputs and return the same dtypes."""
    triton_ops, eager_ops = get_ops(KernelPolicy.whole("triton")), get_ops(KernelPolicy.whole("eager"))
    for name in FAMILIES[family]:
        args, kwargs = _op_inputs(name, torch.Generator().manual_seed(0))
        with cuda_autocast_policy(torch.float16), autocast_for(CPU):
            want = _dtypes(getattr(triton_ops, name)(*args, **kwargs))
            got = _dtypes(getattr(eager_ops, name)(*args, **kwargs))
        assert got == want, f"{name}: eager twin returns {got}, Triton op {want}"


def _small_model(backend: str, kernels: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(get_config("tiny", vocab_size=64, num_layers=2, ve_layers=(1,), xsa_last_n=1, model_dim=64,
                          num_heads=2, num_kv_heads=1, mlp_hidden=128, seq_len=32, rope_train_seq_len=32,
                          bigram_buckets=64, bigram_dim=32, ve_dim=32, backend=backend, kernels=kernels))


@pytest.mark.parametrize("name,backend,kernels,dtype", POLICIES, ids=POLICY_IDS)
def test_model_forward_backward(name, backend, kernels, dtype):
    """Training forward, backward and the scored-positions head under CUDA's autocast dtypes."""
    model = _small_model(backend, kernels)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 64, (2, 32), generator=g), torch.randint(0, 64, (2, 32), generator=g)
    with cuda_autocast_policy(dtype):
        with autocast_for(CPU):
            loss = model(x, y)
            nll = model.nll_at(x, torch.tensor([[5, 31], [0, 17]]), y[:, :2])
        loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and 3.0 < loss.item() < 5.5  # ln 64 = 4.16
    assert nll.dtype == torch.float32 and nll.shape == (2, 2) and torch.isfinite(nll).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and gr.dtype == torch.float32 and torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("name,backend,kernels,dtype", POLICIES, ids=POLICY_IDS)
def test_training_steps(name, backend, kernels, dtype, corpus, tmp_path):
    """Two optimizer steps and a validation of the training job, its forward under CUDA's autocast dtypes."""
    tcfg = get_train_config("tiny", steps=2, batch_tokens=2 * 32, warmdown_steps=1, val_every=2,
                            val_max_tokens=2 * 32, checkpoint_every=2)
    mcfg = get_config("tiny", model_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128, seq_len=32,
                      rope_train_seq_len=32, bigram_dim=32, ve_dim=32, backend=backend, kernels=kernels)
    with cuda_autocast_policy(dtype):
        summary = run_training(tcfg, mcfg, corpus, tmp_path / "run", progress=False)
    assert summary["step"] == 2 and summary["event"] == "final"
    assert all(0 < summary[k] < 10 for k in ("train_loss", "val_loss", "ema_val_loss"))


@pytest.mark.parametrize("name,backend,kernels,dtype", POLICIES, ids=POLICY_IDS)
def test_evaluation_and_ttt(name, backend, kernels, dtype):
    """Sliding-window scoring and score-first TTT under CUDA's autocast dtypes: finite, and TTT moves weights."""
    model = _small_model(backend, kernels, seed=1)
    g = torch.Generator().manual_seed(2)
    tokens, nbytes = torch.randint(0, 64, (1 + 2 * 64,), generator=g), torch.randint(1, 4, (2 * 64,), generator=g)
    before = model.tok_emb.weight.detach().clone()
    config = TTTConfig(chunk_tokens=64, epochs=1, lr=0.05, momentum=0.9, freeze_blocks=1)
    with cuda_autocast_policy(dtype):
        pre = evaluate(model, tokens, target_bytes=nbytes, stride=16, batch=4)
        post = ttt_evaluate(model, tokens, target_bytes=nbytes, config=config, stride=16, batch=4)
    assert 0 < pre["val_bpb"] < 10 and 0 < post["val_bpb"] < 10 and post["tokens"] == pre["tokens"]
    assert not torch.equal(model.tok_emb.weight, before)

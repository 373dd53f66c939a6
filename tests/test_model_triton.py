"""The whole model on Triton (issue 7, item 5): one backend switch routes every op family to the kernels.

A small `tiny`-shaped model (2 layers, d 128, head_dim 32, seq 64, one XSA layer, value embeddings on both
layers) with every parameter randomly perturbed (so the zero-initialized projections do not hide any path):
  - backend "triton" runs norms, QK-norm+RoPE, attention, XSA, MLP and loss as `triton_golf::` custom ops in
    forward and backward, and never calls an eager twin of kernels.reference;
  - its loss and every parameter gradient match backend "eager" in fp32;
  - a few real optimizer steps (Muon + AdamW from train.optim, grad clip as the training loop) track eager;
  - with int6 block weights (quant.schemes + kernels.int6_layout) per_token_nll and its gradients match eager;
  - torch.compile(fullgraph=True, backend="aot_eager") of the Triton model holds every kernel family in its
    one graph and matches eager in loss and gradients.
Everything runs on the kernel test device: the CPU under the Triton interpreter, or CUDA where present (the
compiled kernels cannot take CPU tensors), fp32 on both; on CUDA the tolerances allow for a GPU's
fp32 accumulation orders (10x the interpreter's, still far below any real error).
"""
import contextlib
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import reference
from model.config import get_config
from model.gpt import GPT
from kernels.int6_layout import pack_int6
from quant.schemes import quantize_int6_per_row
from train.config import get_train_config
from train.optim import build_optimizers

from conftest import DEVICE

NUM_LAYERS, SEQ_LEN, BATCH = 2, 64, 2
CONFIG = dict(num_layers=NUM_LAYERS, seq_len=SEQ_LEN, xsa_last_n=1, ve_layers=(0, 1))
PERTURB_STD = 0.05
# the eager twins the Triton model must never call (all of kernels.reference's op functions)
EAGER_TWINS = ("rms_norm", "residual_norm", "rotate_half_split", "qk_norm_rope", "attention", "exclusive_projection",
               "linear", "relu2_mlp", "softcap_cross_entropy", "int6_linear")
# aten ops that would mean some op family still runs eagerly in the Triton model
EAGER_ATEN_MARKERS = ("scaled_dot_product", "softmax", "nll_loss", "cross_entropy", "relu", "tanh", "rms_norm",
                      "rsqrt", "vector_norm")
TOL = 10.0 if DEVICE == "cuda" else 1.0
GRAD_RTOL, GRAD_ATOL_OF_MAX = 1e-4 * TOL, 1e-5 * TOL



class OpRecorder(TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher below autograd (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

    def count(self, name: str) -> int:
        return self.calls.count(name)


@contextlib.contextmanager
def eager_twins_forbidden():
    """Make every eager twin in kernels.reference raise, so any call from the model fails the test."""
    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"the Triton model called the eager twin kernels.reference.{name}")
        return call

    with pytest.MonkeyPatch.context() as mp:
        for name in EAGER_TWINS:
            mp.setattr(reference, name, forbidden(name))
        yield


def make_config():
    return get_config("tiny", **CONFIG)


@pytest.fixture(scope="module")
def perturbed_state():
    """A state dict with every parameter moved off its init by seeded noise (zero-init paths get gradients)."""
    torch.manual_seed(0)
    model = GPT(make_config())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * PERTURB_STD)
    return copy.deepcopy(model.state_dict())


def build_model(state, backend: str) -> GPT:
    model = GPT(make_config())
    model.load_state_dict(state)
    model.to(DEVICE)
    model.bigram.scale.requires_grad_(True)  # as the training job does: its gradient is checked too
    model.set_backend(backend)
    return model


def batch(seed: int, vocab: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (BATCH, SEQ_LEN + 1), generator=g).to(DEVICE)
    return ids[:, :-1], ids[:, 1:]


def loss_and_grads(model: GPT, x, y):
    model.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_match(got: dict, want: dict):
    """Per tensor: |got - want| <= GRAD_RTOL * |want| + GRAD_ATOL_OF_MAX * max|want| (scale-free atol, so
    a tensor of small gradients is held to the same relative standard as a large one)."""
    assert got.keys() == want.keys()
    for name, w in want.items():
        atol = GRAD_ATOL_OF_MAX * w.abs().max().item()
        torch.testing.assert_close(got[name], w, rtol=GRAD_RTOL, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def triton_run(perturbed_state):
    """One forward+backward of the Triton model with the eager twins forbidden and every op recorded."""
    model = build_model(perturbed_state, "triton")
    x, y = batch(2, model.cfg.vocab_size)
    recorder = OpRecorder()
    with eager_twins_forbidden(), recorder:
        loss, grads = loss_and_grads(model, x, y)
    return dict(model=model, loss=loss, grads=grads, ops=recorder, x=x, y=y)


def test_one_switch_runs_every_op_family_on_triton(triton_run):
    ops, cfg = triton_run["ops"], triton_run["model"].cfg
    L = cfg.num_layers
    expected = {  # forward calls per family; each has exactly as many backward calls
        "triton_golf.rms_norm": 1,                     # embedding norm
        "triton_golf.residual_norm": 2 * L + 1,        # two per block (with the residual glue), final norm
        "triton_golf.qk_norm_rope": 2 * L,             # q and k of every block
        "triton_golf.causal_gqa_attention": L,
        "triton_golf.exclusive_projection": 0,         # XSA runs fused in the attention op of the last layers
        "triton_golf.relu2_mlp": L,
        "triton_golf.softcap_cross_entropy": 1,
    }
    for op, n in expected.items():
        assert ops.count(op) == n, f"{op}: {ops.count(op)} forward calls, want {n}"
        assert ops.count(op + "_backward") == n, f"{op}_backward: {ops.count(op + '_backward')} calls, want {n}"
    assert 0 < cfg.xsa_last_n < L and cfg.ve_layers, "the config must exercise XSA and non-XSA layers and VE"
    aten = {c for c in ops.calls if c.startswith("aten.")}
    assert "aten.mm" in aten  # the recorder does see aten ops (the q/k/v/o projections)
    eager = sorted(c for c in aten if any(m in c for m in EAGER_ATEN_MARKERS))
    assert not eager, f"eager aten ops in the Triton model: {eager}"


def test_eager_twins_are_really_forbidden(perturbed_state):
    """The spy used above works: the eager model trips it at once."""
    model = build_model(perturbed_state, "eager")
    x, y = batch(2, model.cfg.vocab_size)
    with eager_twins_forbidden(), pytest.raises(AssertionError, match="eager twin kernels.reference"):
        model(x, y)


def test_loss_and_every_gradient_match_eager(triton_run, perturbed_state):
    model = build_model(perturbed_state, "eager")
    loss, grads = loss_and_grads(model, triton_run["x"], triton_run["y"])
    torch.testing.assert_close(triton_run["loss"], loss, rtol=1e-5 * TOL, atol=1e-6 * TOL)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == trainable  # every trainable parameter gets a gradient
    zero = [n for n, g in grads.items() if not g.abs().max() > 0 and not n.startswith("bigram.embed")]
    assert not zero, f"gradients identically zero after perturbation: {zero}"
    assert_grads_match(triton_run["grads"], grads)


def train_losses(state, backend: str, steps: int) -> tuple[list[float], dict]:
    """`steps` optimizer steps as train.loop takes them (clip, Muon + AdamW); returns losses and final weights."""
    model = build_model(state, backend)
    tcfg = get_train_config("tiny")
    muon, adam = build_optimizers(
        model, model.cfg.num_encoder_layers, matrix_lr=tcfg.matrix_lr, scalar_lr=tcfg.scalar_lr,
        tok_lr=tcfg.tok_lr, decoder_lr_mult=tcfg.decoder_lr_mult, muon_momentum=tcfg.muon_momentum_start,
        muon_wd=tcfg.muon_wd, adam_wd=tcfg.adam_wd, adam_betas=(tcfg.adam_beta1, tcfg.adam_beta2),
        adam_eps=tcfg.adam_eps, ns_steps=tcfg.ns_steps)
    x, y = batch(10, model.cfg.vocab_size)  # one batch, fitted: the loss must fall
    losses = []
    for _ in range(steps):
        loss = model(x, y)
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        muon.step()
        adam.step()
        model.zero_grad(set_to_none=True)
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_training_steps_track_eager(perturbed_state):
    steps = 3
    eager_losses, eager_weights = train_losses(perturbed_state, "eager", steps)
    triton_losses, triton_weights = train_losses(perturbed_state, "triton", steps)
    assert eager_losses[-1] < eager_losses[0] - 0.1, eager_losses  # the steps do train
    torch.testing.assert_close(torch.tensor(triton_losses), torch.tensor(eager_losses), rtol=1e-4 * TOL, atol=0)
    # Adam's first steps turn near-zero gradients into +-lr updates whose sign is rounding noise: a few elements of
    # a tensor (at most 3%) may differ by up to Adam's bound (lr per step); the rest must agree in norm
    max_lr = max(get_train_config("tiny").scalar_lr, get_train_config("tiny").tok_lr, get_train_config("tiny").matrix_lr)
    for name, w in eager_weights.items():
        diff = (triton_weights[name] - w).abs()
        noisy = diff > 1e-4 * TOL  # fp32 rounding after 3 steps stays near 1e-5; a sign flip moves ~lr
        assert noisy.float().mean().item() <= 0.03 or noisy.sum().item() <= 1, f"{name}: {int(noisy.sum())} elements differ"
        assert diff.max().item() <= steps * max_lr, f"{name}: an element moved {diff.max().item():.3g} apart"
        gap = (triton_weights[name] - w)[~noisy].norm().item()
        assert gap <= (1e-4 * w.norm().item() + 1e-6) * TOL, f"{name}: trained weights differ by {gap:.3g} (norm)"


def set_int6_weights(model: GPT) -> int:
    """Quantize every block matrix to int6 (the exporter's per-row scheme), pack it and set it; returns count."""
    linears = model.block_linears()
    for _, linear in linears:
        q, scales, _ = quantize_int6_per_row(linear.weight.detach())
        linear.set_int6(pack_int6(q), scales.float())
    return len(linears)


def int6_nll_and_grads(state, backend: str):
    """per_token_nll with int6 block weights, its backward, the gradients and the recorded ops."""
    model = build_model(state, backend)
    int6_names = {f"{name}.weight" for name, _ in model.block_linears()}
    set_int6_weights(model)
    x, y = batch(3, model.cfg.vocab_size)
    recorder = OpRecorder()
    forbid = eager_twins_forbidden() if backend == "triton" else contextlib.nullcontext()
    with forbid, recorder:
        nll = model.per_token_nll(x, y)
        nll.mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return nll.detach(), grads, recorder, int6_names


def test_int6_evaluation_matches_eager_and_passes_gradients(perturbed_state):
    nll_e, grads_e, _, _ = int6_nll_and_grads(perturbed_state, "eager")
    nll_t, grads_t, ops, int6_names = int6_nll_and_grads(perturbed_state, "triton")
    assert len(int6_names) == 6 * NUM_LAYERS
    assert ops.count("triton_golf.int6_linear") == len(int6_names)
    assert ops.count("triton_golf.int6_linear_backward") == len(int6_names)  # dx flows back through each
    assert nll_t.shape == (BATCH, SEQ_LEN)
    torch.testing.assert_close(nll_t, nll_e, rtol=1e-5 * TOL, atol=1e-5 * TOL)
    # the int6 weights are frozen buffers: the float block matrices are unused and get no gradient,
    # while everything below the int6 linears (embeddings, first block's mixing) does
    assert not int6_names & set(grads_t)
    assert {"tok_emb.weight", "bigram.proj.weight", "blocks.0.resid_mix"} <= set(grads_t)
    assert_grads_match(grads_t, grads_e)


def test_compiled_triton_model_matches_eager(triton_run, perturbed_state):
    """fullgraph=True: one graph, no break; aot_eager (wrapped only to look at the graph dynamo hands it)."""
    torch._dynamo.reset()
    graph_ops = set()

    def aot_eager_recording(gm, example_inputs):
        graph_ops.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    model = build_model(perturbed_state, "triton")
    compiled = torch.compile(model, fullgraph=True, backend=aot_eager_recording)
    x, y = triton_run["x"], triton_run["y"]
    loss, grads = loss_and_grads(compiled, x, y)
    families = {op.removeprefix("triton_golf.").removesuffix(".default") for op in graph_ops
                if op.startswith("triton_golf.")}
    assert families == {"rms_norm", "residual_norm", "qk_norm_rope", "causal_gqa_attention", "relu2_mlp",
                        "softcap_cross_entropy"}, graph_ops
    eager_loss, eager_grads = loss_and_grads(build_model(perturbed_state, "eager"), x, y)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5 * TOL, atol=1e-6 * TOL)
    assert_grads_match({n.removeprefix("_orig_mod."): g for n, g in grads.items()}, eager_grads)

"""The compiled training step (train/compiled.py): torch.compile inside DDP splits the graph at DDP's buckets (so
the all-reduce overlaps the backward), the warm-up compile leaves no trace, and a 2-process compiled gloo run
trains exactly as the eager single-process run. Compiles use aot_eager (Inductor's cold compile costs tens of
seconds on a small CPU; the graph capture, the DDP split and the autograd are the same)."""
import contextlib

import pytest
import torch
import torch.distributed as dist

from model.config import get_config
from model.gpt import GPT
from test_ddp import metrics, torchrun_train
from train.compiled import training_module, warm_up

SMALL = dict(num_layers=2, seq_len=32, xsa_last_n=1, ve_layers=(0, 1))


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group (DDP needs one), torn down after the test."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def tiny_model():
    torch.manual_seed(0)
    model = GPT(get_config("tiny", **SMALL))
    with torch.no_grad():  # live zero-init paths, so every bucket gets real gradients
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_compile_inside_ddp_splits_the_graph_at_buckets(process_group):
    """DDPOptimizer hands the compiler one graph per gradient bucket: each piece's backward finishes on its own,
    so its bucket's all-reduce starts while the earlier layers' backward still runs. One graph would mean the
    all-reduce waits for the whole backward."""
    torch._dynamo.reset()
    graphs = []

    def counting_aot_eager(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    model, reference = tiny_model(), tiny_model()
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
    # buckets of 1 MB (DDPOptimizer's floor: DDP's first bucket) over ~2 MB of parameters: two pieces
    module = training_module(model, compile=True, backend=counting_aot_eager, ddp=True, bucket_cap_mb=1.0)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1], ids[:, 1:]
    loss = module(x, y)
    loss.backward()
    assert params_mb > 1.5 and len(graphs) >= 2, f"{len(graphs)} graph(s) for {params_mb:.2f} MB of parameters"
    ref_loss = reference(x, y)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    pieces = len(graphs)
    with module.no_sync():  # gradient accumulation's micro-steps reuse the graphs: no recompile
        module(x, y).backward()
    assert len(graphs) == pieces


def test_warm_up_compiles_and_leaves_no_gradient():
    torch._dynamo.reset()
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    module = training_module(model, compile=True, backend="aot_eager")
    seconds = warm_up(module, model, (2, 32), torch.device("cpu"), contextlib.nullcontext)
    assert seconds > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.slow
def test_two_process_compiled_ddp_matches_single_process_eager(tmp_path, corpus):
    """torchrun 2 x gloo, compiled (aot_eager) inside DDP, 2 micro-steps per rank (no_sync on the first) ==
    1 process, eager, 4 micro-steps: the same global batch, the same losses and weights as an eager run."""
    compiled_out, eager_out = tmp_path / "compiled", tmp_path / "eager"
    final = torchrun_train(compiled_out, 2, 2, corpus, extra=("--compile", "--compile-backend", "aot_eager"))
    assert final["world_size"] == 2 and final["compile_s"] > 0
    single = torchrun_train(eager_out, 1, 4, corpus, extra=("--no-compile",))
    assert single["compile_s"] is None
    got, want = metrics(compiled_out), metrics(eager_out)
    assert [s for s, _, _ in got] == [s for s, _, _ in want] == [1, 2, 3, 4]
    for (_, lg, vg), (_, lw, vw) in zip(got, want):
        assert lg == pytest.approx(lw, abs=1e-5)
        assert (vg is None and vw is None) or vg == pytest.approx(vw, abs=1e-5)
    a = torch.load(compiled_out / "final_model.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(eager_out / "final_model.pt", map_location="cpu", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=f"{name} differs")


def test_late_qat_switch_recompiles_nothing_and_matches_eager():
    """Late QAT flips a tensor the compiled graph reads: the compile count stays flat across the switch (on a GPU
    a recompile would charge Inductor's minutes to the timed steps), and the compiled forward and gradients
    equal the eager model's, off and on."""
    torch._dynamo.reset()
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    model, reference = tiny_model(), tiny_model()
    reference.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend=counting_backend, fullgraph=True)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randint(0, 64, (2, 32), generator=g), torch.randint(0, 64, (2, 32), generator=g)
    losses = []
    for qat in (False, True, False):
        model.set_late_qat(qat)
        reference.set_late_qat(qat)
        assert model.late_qat is qat
        loss, want = compiled(x, y), reference(x, y)
        loss.backward()
        want.backward()
        assert len(compiles) == 1, f"recompiled at late_qat={qat}"
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
        losses.append(loss.item())
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            if q.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        model.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
    assert losses[1] != losses[0] and losses[2] == losses[0]  # the switch is really read, and really undone

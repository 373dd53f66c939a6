"""The rehearsal's stages, each on fake CUDA tensors under CUDA's bf16 autocast (bench/rehearsal/fake_cuda.py).

Each stage returns a dict of what it found; an exception inside a stage is caught by the runner and becomes a
failing row (bench/rehearsal/__main__.py).
"""
from __future__ import annotations

import time
from collections import Counter

import torch
from torch._library.custom_ops import OPDEFS
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.rehearsal.fake_cuda import (OpLog, SavedActivations, cuda_autocast, fake_cuda_model, fake_tokens,
                                       io_tensors, tensor_bytes)

STRIDE = 64  # the evaluation's scored positions per window (sliding window, stride 64)


def _mode() -> FakeTensorMode:
    return FakeTensorMode(allow_non_fake_inputs=True)  # the meta-built model becomes fake in to_empty


def forward_passes(preset: str, backend: str, kernels: str, seqs: int, ttt_seqs: int) -> dict:
    """The training forward (train mode, autograd recording), the scored-positions evaluation head (eval mode,
    no grad) and the TTT forward (blocks 0-1 frozen), with the op log and saved activations of training's."""
    mode = _mode()
    cfg, model = fake_cuda_model(mode, preset, backend=backend, kernels=kernels)
    x, y = fake_tokens(mode, seqs, cfg.seq_len)
    saved, log = SavedActivations(model.parameters()), OpLog()
    with mode, cuda_autocast():
        model.train()
        with saved.hooks(), log:
            loss = model(x, y)
        model.eval()
        with torch.no_grad():
            positions = torch.arange(cfg.seq_len - STRIDE, cfg.seq_len, device="cuda").expand(seqs, STRIDE)
            nll = model.nll_at(x, positions, y[:, -STRIDE:])
        model.train()
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(("blocks.0.", "blocks.1.")))
        tx, ty = fake_tokens(mode, ttt_seqs, cfg.seq_len)
        ttt_saved = SavedActivations(model.parameters())
        with ttt_saved.hooks():
            ttt_loss = model(tx, ty)
    if loss.dtype != torch.float32 or loss.shape != () or nll.shape != (seqs, STRIDE) or ttt_loss.shape != ():
        raise AssertionError(f"unexpected outputs: loss {loss.dtype} {tuple(loss.shape)}, nll {tuple(nll.shape)}")
    ops = Counter(str(func.overloadpacket) for func, *_ in log.calls)
    return {"mode": mode, "model": model, "cfg": cfg, "calls": log.calls, "saved_bytes": saved.bytes,
            "ttt_saved_bytes": ttt_saved.bytes, "loss_dtype": str(loss.dtype), "nll_dtype": str(nll.dtype),
            "custom_ops": {k: v for k, v in ops.items() if k.startswith("triton_golf")},
            "aten_calls": sum(v for k, v in ops.items() if k.startswith("aten")), "params": model.num_params()}


class _Ctx:
    """What a custom op's setup_context and backward read and write on autograd's ctx."""

    def __init__(self, inputs):
        self.needs_input_grad = tuple(isinstance(t, torch.Tensor) and t.is_floating_point() for t in inputs)
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *args):
        pass

    def set_materialize_grads(self, value):
        pass


def backward_formulas(mode: FakeTensorMode, calls: list) -> dict:
    """Every Triton op's registered backward (setup_context + backward, as autograd would call them) on the
    forward's own fake CUDA inputs under CUDA autocast; each gradient must match its input's shape and dtype.
    Returns the backward's op log (the backward ops and their glue) and the ops checked."""
    log, checked = OpLog(), Counter()
    for func, args, kwargs, out in calls:
        name = func._schema.name
        if not name.startswith("triton_golf::") or name.endswith("_backward"):
            continue
        opdef = OPDEFS[name]
        if opdef._backward_fn is None:
            continue
        inputs = _all_arguments(func, args, kwargs)
        ctx = _Ctx(inputs)
        outs = out if isinstance(out, tuple) else (out,)
        with mode, cuda_autocast():
            opdef._setup_context_fn(ctx, inputs, out)
            grads = tuple(torch.empty_like(o) if isinstance(o, torch.Tensor) and o.is_floating_point() else None
                          for o in outs)
            with log:
                result = opdef._backward_fn(ctx, *grads)
        result = result if isinstance(result, tuple) else (result,)
        for i, (t, g) in enumerate(zip(inputs, result)):
            if isinstance(t, torch.Tensor) and g is not None and (g.shape != t.shape or g.dtype != t.dtype):
                raise AssertionError(f"{name}: gradient {i} is {g.dtype} {tuple(g.shape)}, input {t.dtype} "
                                     f"{tuple(t.shape)}")
        checked[name] += 1
    return {"calls": log.calls, "checked": dict(checked)}


def _all_arguments(func, args, kwargs) -> tuple:
    """Every argument of a dispatched call in schema order, defaults filled in (autograd's `inputs`)."""
    schema = func._schema.arguments
    rest = tuple(kwargs[a.name] if a.name in kwargs else a.default_value for a in schema[len(args):])
    return tuple(args) + rest


def compile_capture(preset: str, backend: str, kernels: str, seqs: int) -> dict:
    """torch.compile(fullgraph=True) on the training forward: Dynamo's graphs (count, nodes, custom ops); then
    how far AOTAutograd and Inductor get on fake CUDA, and where each stops (one line)."""
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def dynamo_only(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def run(compiler, train: bool):
        torch._dynamo.reset()
        mode = _mode()
        cfg, model = fake_cuda_model(mode, preset, backend=backend, kernels=kernels)
        x, y = fake_tokens(mode, seqs, cfg.seq_len)
        model.train(train)
        compiled = torch.compile(model, backend=compiler, fullgraph=True)
        t0 = time.perf_counter()
        with mode, cuda_autocast(), torch.set_grad_enabled(train):
            compiled(x, y)
        return time.perf_counter() - t0

    seconds = run(dynamo_only, True)
    nodes = [n for gm in graphs for n in gm.graph.nodes]
    custom = Counter(str(n.target) for n in nodes if n.op == "call_function" and "triton_golf" in str(n.target))
    result = {"graphs": len(graphs), "nodes": len(nodes), "custom_ops": dict(custom), "dynamo_s": seconds}
    aot = []

    def keep(kind):
        def compiler(gm, example_inputs):
            aot.append((kind, len(gm.graph.nodes)))
            return gm.forward
        return compiler

    result["aot_inference"] = _stops(lambda: run(aot_autograd(fw_compiler=keep("inference")), False), aot)
    result["aot_training"] = _stops(lambda: run(aot_autograd(fw_compiler=keep("forward"),
                                                             bw_compiler=keep("backward")), True), aot)
    result["inductor"] = _stops(lambda: run("inductor", False), [])
    torch._dynamo.reset()
    return result


def _stops(fn, graphs: list) -> str:
    """"ok (...)" or where it stopped: the exception's first line."""
    del graphs[:]
    try:
        fn()
    except Exception as exc:  # the point of the stage: report how far down it gets
        cause = exc
        while getattr(cause, "inner_exception", None) is not None or cause.__cause__ is not None:
            cause = getattr(cause, "inner_exception", None) or cause.__cause__
        first = (str(cause).strip().splitlines() or [""])[0][:160]
        return f"stops: {type(cause).__name__}: {first}"
    return "ok (" + ", ".join(f"{kind} graph {n} nodes" for kind, n in graphs) + ")"


def optimizer_steps(mode: FakeTensorMode, model, preset: str) -> dict:
    """Gradient clip, batched Muon, AdamW (fused on CUDA) and the EMA update on fake CUDA parameters, as
    train.loop runs them; the optimizer state's bytes after the first step."""
    from train.config import get_train_config
    from train.ema import EMA
    from train.step import build_training_optimizers

    tcfg = get_train_config(preset)
    for p in model.parameters():
        p.requires_grad_(True)
    with mode:
        for p in model.parameters():
            p.grad = torch.empty_like(p)
        muon, adam = build_training_optimizers(model, tcfg)
        ema = EMA(model, tcfg.ema_decay)
        log = OpLog()
        with log:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            muon.step()
            adam.step()
            ema.update(model)
    state = sum(tensor_bytes(t) for opt in (muon, adam) for s in opt.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    ema_bytes = sum(tensor_bytes(t) for t in ema.state_dict().values())
    return {"state_bytes": state, "ema_bytes": ema_bytes, "calls": log.calls,
            "param_bytes": sum(tensor_bytes(p) for p in model.parameters())}


def largest_transient(calls: list) -> int:
    """Bytes of the largest single backward call's outputs: what the backward holds beyond the saved
    activations at its busiest op (its scratch is added by the memory projection)."""
    return max((sum(tensor_bytes(t) for t in io_tensors(a, k, o)[1]) for _, a, k, o in calls), default=0)

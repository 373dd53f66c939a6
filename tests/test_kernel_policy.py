"""The kernel policy (kernels.ops): one choice per op family, parsed from --kernels, held by ModelConfig, routing the
model; and the policy-built model compiles in one graph and matches the eager model."""
import copy
import dataclasses

import pytest
import torch

from kernels import ops, reference, triton_ops
from kernels.ops import FAMILIES, KernelPolicy, default_kernels, get_ops, parse_overrides, policy_from_flags
from model.config import ModelConfig, get_config
from model.gpt import GPT

from conftest import DEVICE
from test_model_triton import OpRecorder

SMALL = dict(num_layers=2, seq_len=32, xsa_last_n=1, ve_layers=(0, 1))
GLUE = "rms_norm=inductor,residual_norm=inductor,qk_norm_rope=inductor"


def test_whole_policies_and_overrides():
    triton = KernelPolicy.whole("triton")
    assert set(triton) == set(FAMILIES) and set(triton.values()) == {"triton"}
    mixed = triton.override("rms_norm=inductor, attention=eager")
    assert mixed["rms_norm"] == "inductor" and mixed["attention"] == "eager" and mixed["mlp"] == "triton"
    assert mixed.overrides_from("triton") == "attention=eager,rms_norm=inductor"  # canonical: family order
    assert KernelPolicy.resolve("triton", mixed.overrides_from("triton")) == mixed
    assert triton.override("") == triton and hash(triton.override("")) == hash(triton)
    assert copy.deepcopy(mixed) == mixed
    with pytest.raises(AttributeError, match="immutable"):
        mixed._choices = ()


@pytest.mark.parametrize("text,message", [
    ("attn=triton", "unknown op family 'attn'"),
    ("attention=cuda", "unknown kernel choice 'cuda' for attention"),
    ("attention", "is not FAMILY=CHOICE"),
    ("mlp=triton,mlp=eager", "given twice"),
])
def test_bad_overrides_are_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides(text)


def test_config_holds_the_policy_in_canonical_form():
    cfg = get_config("tiny", backend="triton", kernels=" qk_norm_rope=inductor,rms_norm=inductor ")
    assert cfg.kernels == "rms_norm=inductor,qk_norm_rope=inductor"
    assert cfg.kernel_policy["qk_norm_rope"] == "inductor" and cfg.kernel_policy["attention"] == "triton"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert get_config("tiny", backend="triton", kernels="attention=triton").kernels == ""  # no-op override dropped
    old = {k: v for k, v in get_config("tiny").to_dict().items() if k != "kernels"}  # files written before the field
    assert ModelConfig.from_dict(old).kernel_policy == KernelPolicy.whole("eager")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        get_config("tiny", backend="cuda")
    with pytest.raises(ValueError, match="unknown op family"):
        get_config("tiny", kernels="norms=inductor")


def test_ops_namespace_is_built_from_the_policy():
    namespace = get_ops(KernelPolicy.whole("triton").override("attention=eager,rms_norm=inductor"))
    assert namespace.attention is reference.attention
    assert namespace.exclusive_projection is reference.exclusive_projection
    assert namespace.rms_norm is reference.rms_norm  # inductor: the twin, visible to the compiler
    assert namespace.residual_norm is triton_ops.residual_norm and namespace.relu2_mlp is triton_ops.relu2_mlp
    assert namespace.backend == "mixed" and get_ops("eager").backend == "eager"
    assert set(ops.OP_NAMES) <= set(vars(namespace))


def test_default_policy_and_flags():
    assert default_kernels("cpu", True) == ("eager", "")
    assert default_kernels("cuda", False) == ("triton", "")
    backend, kernels = default_kernels("cuda", True)
    policy = KernelPolicy.resolve(backend, kernels)
    assert {f for f, c in policy.items() if c == "inductor"} == {"rms_norm", "residual_norm", "qk_norm_rope"}
    assert {f for f, c in policy.items() if c == "triton"} == {"attention", "mlp", "cross_entropy", "int6"}
    # --backend names a whole policy; --kernels overrides on top of --backend, of a model file's, or of the default
    assert policy_from_flags("eager", "attention=triton", "cuda", True) == ("eager", "attention=triton")
    assert policy_from_flags(None, "attention=eager", "cuda", True) == ("triton", GLUE.replace(
        "rms_norm=inductor", "attention=eager,rms_norm=inductor"))
    assert policy_from_flags(None, None, "cuda", True, base=("triton", "")) == ("triton", "")
    assert policy_from_flags(None, None, "cpu", False) == ("eager", "")


def perturbed(cfg):
    torch.manual_seed(0)
    model = GPT(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.to(DEVICE)


def batch(cfg):
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len + 1), generator=torch.Generator().manual_seed(2))
    ids = ids.to(DEVICE)
    return ids[:, :-1], ids[:, 1:]


def loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


def test_set_kernels_routes_each_family():
    """Triton attention / MLP / CE with the glue on the twins: those custom ops run, the norms do not."""
    cfg = get_config("tiny", **SMALL)
    model = perturbed(cfg)
    model.set_kernels("triton", GLUE)
    assert model.cfg.kernels == GLUE and model.blocks[0].attn.ops.policy == model.cfg.kernel_policy
    x, y = batch(cfg)
    recorder = OpRecorder()
    with recorder:
        loss, grads = loss_and_grads(model, x, y)
    assert recorder.count("triton_golf.causal_gqa_attention") == cfg.num_layers
    assert recorder.count("triton_golf.softcap_cross_entropy") == 1
    assert not [c for c in recorder.calls if "rms_norm" in c and c.startswith("triton_golf")]
    assert not recorder.count("triton_golf.residual_norm") and not recorder.count("triton_golf.qk_norm_rope")
    eager = perturbed(cfg)
    eager_loss, eager_grads = loss_and_grads(eager, x, y)
    tol = 10.0 if DEVICE == "cuda" else 1.0
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5 * tol, atol=1e-6 * tol)
    for name, g in eager_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4 * tol, atol=1e-5 * tol * g.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        model.set_kernels("cuda-magic")
    assert model.cfg.kernels == GLUE  # a refused policy changes nothing


def test_default_compiled_policy_is_one_graph():
    """The default CUDA policy under torch.compile(fullgraph=True): Triton attention, MLP and CE as custom ops in
    the one graph, the glue traced as aten ops (what Inductor fuses); loss and gradients match eager."""
    torch._dynamo.reset()
    graph_ops = set()

    def aot_eager_recording(gm, example_inputs):
        graph_ops.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    cfg = dataclasses.replace(get_config("tiny", **SMALL), backend="triton", kernels=GLUE)
    model = perturbed(cfg)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=aot_eager_recording)
    x, y = batch(cfg)
    loss, grads = loss_and_grads(compiled, x, y)
    custom = {op.removeprefix("triton_golf.").removesuffix(".default") for op in graph_ops
              if op.startswith("triton_golf.")}
    assert {"causal_gqa_attention", "relu2_mlp", "softcap_cross_entropy"} <= custom
    assert not custom & {"rms_norm", "residual_norm", "qk_norm_rope"}, custom
    eager_loss, eager_grads = loss_and_grads(perturbed(get_config("tiny", **SMALL)), x, y)
    tol = 10.0 if DEVICE == "cuda" else 1.0
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5 * tol, atol=1e-6 * tol)
    for name, g in eager_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4 * tol, atol=1e-5 * tol * g.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


def test_train_cli_resolves_compile_and_policy():
    """--compile defaults to CUDA's presence; --kernels goes on top of --backend or of the device's default."""
    from train.__main__ import build_parser, configs_from_args
    from common.cli_errors import CLIError

    parse = build_parser().parse_args
    tcfg, mcfg = configs_from_args(parse(["--preset", "tiny", "--kernels", "attention=inductor"]))
    assert tcfg.compile is torch.cuda.is_available()
    assert (mcfg.backend, mcfg.kernels) == policy_from_flags(None, "attention=inductor", DEVICE, tcfg.compile)
    tcfg, mcfg = configs_from_args(parse(["--preset", "tiny", "--no-compile", "--backend", "triton",
                                          "--kernels", "cross_entropy=eager"]))
    assert not tcfg.compile and (mcfg.backend, mcfg.kernels) == ("triton", "cross_entropy=eager")
    with pytest.raises(CLIError, match="unknown op family 'norm'"):
        configs_from_args(parse(["--preset", "tiny", "--kernels", "norm=inductor"]))

"""The one switch: which implementation runs each op family of the model (the kernel policy).

A `KernelPolicy` maps every op family to one choice:
  - "triton":   the family's Triton kernels (`kernels.triton_ops`: custom ops, opaque to torch.compile);
  - "eager":    the eager twin of `kernels.reference` (plain PyTorch ops);
  - "inductor": the same eager twin, chosen *for* torch.compile: left visible to the compiler, Inductor fuses it
                with its neighbours. Without a compiled model it runs exactly as "eager".
The two whole-model policies are `KernelPolicy.whole("eager")` and `KernelPolicy.whole("triton")`
(`ModelConfig.backend`); per-family overrides on top of one are written "attention=triton,rms_norm=inductor"
(`ModelConfig.kernels`, the `--kernels` flag). `get_ops(policy)` builds the namespace the model calls.

`default_kernels(device_type, compiled)` is the policy a run gets when it names none. Until a GPU has measured
the candidates (bench/test_bench_train_step.py runs each), it is the issue's rule: on CUDA under torch.compile
the memory-bound glue (norms, QK-norm + RoPE, residual glue) goes to Inductor, attention, MLP, cross-entropy
and int6 to Triton; on CUDA without compile every family is Triton; on the CPU every family is eager (there the
kernels run in Triton's interpreter, a correctness tool).
"""
from __future__ import annotations

from collections.abc import Mapping

from kernels import reference

BACKENDS = ("eager", "triton")
CHOICES = ("triton", "eager", "inductor")

# op family -> the op functions it covers (one family per kernel file)
FAMILIES = {
    "attention": ("attention", "exclusive_projection"),
    "mlp": ("linear", "relu2_mlp"),
    "rms_norm": ("rms_norm",),
    "residual_norm": ("residual_norm",),
    "qk_norm_rope": ("qk_norm_rope", "rotate_half_split"),
    "cross_entropy": ("softcap_cross_entropy",),
    "int6": ("int6_linear",),
}
OP_NAMES = tuple(name for names in FAMILIES.values() for name in names)
GLUE_FAMILIES = ("rms_norm", "residual_norm", "qk_norm_rope")  # memory-bound: Inductor fuses them under compile


class KernelPolicy(Mapping):
    """A frozen mapping op family -> "triton" | "eager" | "inductor", covering every family."""

    __slots__ = ("_choices",)

    def __init__(self, choices: Mapping[str, str]):
        unknown = sorted(set(choices) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown op family {unknown[0]!r}; families: {', '.join(FAMILIES)}")
        missing = [f for f in FAMILIES if f not in choices]
        if missing:
            raise ValueError(f"kernel policy lacks a choice for {', '.join(missing)}")
        for family, choice in choices.items():
            if choice not in CHOICES:
                raise ValueError(f"unknown kernel choice {choice!r} for {family}; choose one of {', '.join(CHOICES)}")
        object.__setattr__(self, "_choices", tuple((f, choices[f]) for f in FAMILIES))

    def __setattr__(self, name, value):
        raise AttributeError("KernelPolicy is immutable; use .override(...)")

    def __reduce__(self):  # copy / deepcopy / pickle rebuild it through __init__
        return KernelPolicy, (dict(self._choices),)

    @classmethod
    def whole(cls, backend: str) -> "KernelPolicy":
        """Every family on one backend ("eager" or "triton"), as `ModelConfig.backend` names it."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown kernel backend {backend!r}; choose one of {tuple(BACKENDS)}")
        return cls({f: backend for f in FAMILIES})

    @classmethod
    def resolve(cls, backend: str, kernels: str = "") -> "KernelPolicy":
        """The whole-model policy of `backend` with the overrides text `kernels` applied."""
        return cls.whole(backend).override(kernels)

    def override(self, kernels: str | Mapping[str, str]) -> "KernelPolicy":
        """A copy with some families changed: "family=choice,..." or a mapping."""
        changes = parse_overrides(kernels) if isinstance(kernels, str) else dict(kernels)
        return KernelPolicy({**dict(self._choices), **changes})

    def overrides_from(self, backend: str) -> str:
        """The canonical overrides text that turns `KernelPolicy.whole(backend)` into this policy ("" if none)."""
        base = KernelPolicy.whole(backend)
        return ",".join(f"{f}={c}" for f, c in self._choices if base[f] != c)

    def __getitem__(self, family: str) -> str:
        for f, c in self._choices:
            if f == family:
                return c
        raise KeyError(family)

    def __iter__(self):
        return (f for f, _ in self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __hash__(self) -> int:
        return hash(self._choices)

    def __eq__(self, other) -> bool:
        return isinstance(other, KernelPolicy) and self._choices == other._choices

    def __repr__(self) -> str:
        return "KernelPolicy(" + ", ".join(f"{f}={c}" for f, c in self._choices) + ")"


def parse_overrides(text: str) -> dict[str, str]:
    """{family: choice} from "attention=triton,rms_norm=inductor" ("" gives {}); ValueError on bad text."""
    if not isinstance(text, str):
        raise ValueError(f"kernel overrides must be text like 'attention=triton,rms_norm=inductor', got {text!r:.60}")
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        family, sep, choice = (s.strip() for s in item.partition("="))
        if not sep or not family or not choice:
            raise ValueError(f"kernel override {item!r} is not FAMILY=CHOICE (e.g. rms_norm=inductor)")
        if family not in FAMILIES:
            raise ValueError(f"unknown op family {family!r}; families: {', '.join(FAMILIES)}")
        if choice not in CHOICES:
            raise ValueError(f"unknown kernel choice {choice!r} for {family}; choose one of {', '.join(CHOICES)}")
        if family in out:
            raise ValueError(f"op family {family!r} is given twice in {text!r}")
        out[family] = choice
    return out


def default_kernels(device_type: str, compiled: bool) -> tuple[str, str]:
    """(backend, overrides) of the policy a run gets when it names none (see the module docstring)."""
    if device_type != "cuda":
        return "eager", ""
    if not compiled:
        return "triton", ""
    return "triton", ",".join(f"{f}=inductor" for f in GLUE_FAMILIES)


def module_of_choice(choice: str):
    """The module whose functions a choice runs: kernels.triton_ops for "triton", the eager twins of
    kernels.reference for "eager" and "inductor". The Triton families are imported here, on first use, not at the
    top of this file: importing them imports triton and registers every custom op (0.8 s on a 2-core CPU), which
    a policy without a "triton" choice (the CPU's default) does not need. A plain import, so tools (lint-imports,
    the bundle's module scan) see the dependency."""
    if choice == "triton":
        from kernels import triton_ops
        return triton_ops
    return reference


class Ops:
    """The op functions a policy picks, as plain attributes (so a model holding it can be deep-copied and
    traced by torch.compile like any module attribute)."""

    def __init__(self, policy: "KernelPolicy | str"):
        self.policy = KernelPolicy.whole(policy) if isinstance(policy, str) else policy
        modules = {choice: module_of_choice(choice) for choice in set(self.policy.values())}
        for family, names in FAMILIES.items():
            module = modules[self.policy[family]]
            for name in names:
                setattr(self, name, getattr(module, name))

    @property
    def backend(self) -> str:
        """"eager" or "triton" for a whole-model policy, else "mixed"."""
        kinds = {"triton" if c == "triton" else "eager" for c in self.policy.values()}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def __repr__(self) -> str:
        return f"Ops({self.policy!r})"


def get_ops(policy: "KernelPolicy | str") -> Ops:
    """The op namespace of `policy`: a KernelPolicy, or a backend name ("eager" or "triton") for every family."""
    return Ops(policy)


def policy_from_flags(backend: str | None, kernels: str | None, device_type: str, compiled: bool,
                      base: tuple[str, str] | None = None) -> tuple[str, str]:
    """(backend, overrides) a command runs with: `--backend B` names a whole-model policy (else `base`, e.g. a
    model file's, else `default_kernels` for the device and compile setting); `--kernels` overrides families
    on top of it. ValueError on a bad override text."""
    if backend is not None:
        base_backend, base_kernels = backend, ""
    elif base is not None:
        base_backend, base_kernels = base
    else:
        base_backend, base_kernels = default_kernels(device_type, compiled)
    policy = KernelPolicy.resolve(base_backend, base_kernels).override(kernels or "")
    return base_backend, policy.overrides_from(base_backend)

"""Step time and peak memory of the seed at its GPU shapes, projected from the rehearsal's op logs.

Both are PROJECTIONS (bench/rehearsal/roofline.py), never measurements:
  - step time: the roofline lower bound of every call of one training micro-step (forward, backward, optimizer)
    on one GPU, per op family, per dQ mode;
  - peak memory: parameters + gradients + optimizer state + EMA + the activations autograd saves in the forward
    (eager autograd's saved tensors; a compiled graph saves no more, its partitioner may recompute glue) + the
    largest backward call's outputs + the attention backward's fp32 dQ buffer, against the GPU's 80 GB.
"""
from __future__ import annotations

from collections import defaultdict

from bench.rehearsal.roofline import GPUS, Cost, aten_backward_cost, attention_scratch_bytes, call_cost, family_of
from bench.rehearsal.stages import largest_transient


def step_costs(forward_calls: list, backward_calls: list, optimizer_calls: list, dq_mode: str) -> dict[str, Cost]:
    """{row: Cost} of one micro-step: each family's forward + backward, then the optimizer, then "total"."""
    rows: dict[str, Cost] = defaultdict(Cost)
    for func, args, kwargs, out in forward_calls:
        family = family_of(func)
        rows[family].add(call_cost(func, args, kwargs, out))
        if not func._schema.name.startswith("triton_golf::"):  # a Triton op's backward is logged on its own
            estimate = aten_backward_cost(func, args, kwargs, out)
            if estimate is not None:
                rows[family].add([estimate])
    for func, args, kwargs, out in backward_calls:
        rows[family_of(func)].add(call_cost(func, args, kwargs, out, dq_mode))
    for func, args, kwargs, out in optimizer_calls:
        rows["optimizer (clip, Muon, AdamW, EMA)"].add(call_cost(func, args, kwargs, out))
    total = Cost()
    for cost in rows.values():
        total.flops += cost.flops
        total.bytes += cost.bytes
        total.calls += cost.calls
        for name, s in cost.seconds.items():
            total.seconds[name] += s
    return {**dict(sorted(rows.items())), "total": total}


def attention_q(forward_calls: list):
    """q of the first attention call (the shape the dQ buffer is sized by), or None without Triton attention."""
    for func, args, _, _ in forward_calls:
        if func._schema.name == "triton_golf::causal_gqa_attention":
            return args[0]
    return None


def peak_memory(static: dict, saved_bytes: int, backward_calls: list, q, dq_mode: str, scale: float = 1.0) -> dict:
    """The memory projection's terms (bytes) and their sum. `backward_calls` and `q` are from a batch `scale`
    times smaller than `saved_bytes`'s: the transients grow with the batch."""
    transient = largest_transient(backward_calls) * scale
    dq_buffer = attention_scratch_bytes(q, dq_mode) * scale if q is not None else 0
    terms = {"parameters": static["param_bytes"], "gradients": static["grad_bytes"],
             "optimizer state": static["state_bytes"], "EMA": static["ema_bytes"],
             "saved activations": saved_bytes, "largest backward call's outputs": int(transient),
             f"dQ buffer ({dq_mode})": int(dq_buffer)}
    total = sum(terms.values())
    return {"terms": terms, "total": total, "fits": {gpu.name: total <= gpu.memory for gpu in GPUS}}


__all__ = ["step_costs", "peak_memory", "attention_q"]

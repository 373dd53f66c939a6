"""State dicts whose weights look trained: every float tensor drawn from a heavy-tailed fit of a trained model.

A fit is made per role (the tensor name with its block index dropped: "blocks.attn.q.weight", "tok_emb.weight")
over the rows of a trained model's tensors of that role (a 1-D tensor is one row): the rows' means (normal:
mean, sd), the rows' standard deviations (log-normal: mean, sd of the log) and the standardized values
(Student-t, degrees of freedom nu by maximum likelihood over a grid). `heavy_tailed_state` then draws every
floating-point tensor of any model config row by row from the fit of its role (integer buffers and roles the
fit lacks keep their init values), so a seed-size state dict gets the row statistics of a trained tiny one.

TINY_FIT is the fit of the `tiny` preset after the demo's 300 steps on the embedded corpus (`python -m train
--preset tiny`, EMA weights, 2026-12-03), printed by `python -m bench.heavy_tailed fit RUN/final_model.pt`.

    python -m bench.heavy_tailed fit MODEL_FILE              # print a fit as Python
    python -m bench.heavy_tailed make --preset seed --out F  # write a model file drawn from TINY_FIT
    python -m bench.heavy_tailed oracle --preset seed        # lower bound on any lossless artifact of a draw
                                                             # (bench.heavy_tailed_oracle)
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

import torch

from model.config import PRESETS, get_config

NU_GRID = (2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
FIT_SAMPLE = 20_000

# role: (nu, row mean: mean, sd, row log-sd: mean, sd)
TINY_FIT = {
    'bigram.embed.weight': (100.0, -0.02405, 0.08348, -0.5188, 0.1465),
    'bigram.proj.weight': (100.0, -0.002131, 0.06386, -0.7712, 0.2646),
    'blocks.attn.k.weight': (10.0, -0.004221, 0.0494, -0.5543, 0.2831),
    'blocks.attn.o.weight': (100.0, -0.001551, 0.04529, -0.7619, 0.2455),
    'blocks.attn.q.weight': (30.0, 0.0002123, 0.04728, -0.6784, 0.2534),
    'blocks.attn.q_gain': (100.0, 1.52, 0.9637, -0.818, 1.403),
    'blocks.attn.v.weight': (10.0, 0.001341, 0.04367, -0.7254, 0.3249),
    'blocks.attn_scale': (15.0, 0.8073, 0.6718, -1.188, 0.9625),
    'blocks.mlp.alpha': (30.0, 0.8593, 0.1876, -0.8591, 0.219),
    'blocks.mlp.beta': (20.0, 0.1349, 0.1161, -1.294, 0.2978),
    'blocks.mlp.down.weight': (4.0, 0.004197, 0.03334, -1.14, 0.3566),
    'blocks.mlp.up.weight': (30.0, -0.0004659, 0.05294, -0.927, 0.7347),
    'blocks.mlp_scale': (8.0, 0.3416, 0.3591, -1.109, 0.2166),
    'blocks.resid_mix': (100.0, 0.4587, 0.4217, -0.4953, 0.8526),
    'skip_gates': (100.0, -0.2037, 0.1261, -0.8553, 0.4431),
    'skip_weights': (100.0, 0.3407, 0.2852, -0.9745, 0.01133),
    'smear.gate': (100.0, -0.3851, 0, -0.2211, 0),
    'tok_emb.weight': (20.0, -0.004274, 0.04001, -0.9237, 0.4916),
    'value_embed.embed.weight': (100.0, -0.005106, 0.0541, -1.647, 1.826),
    'value_embed.layer_scales': (10.0, 2.207, 0, -4.239, 0),
}


def role(name: str) -> str:
    """The tensor's role: its name without the block index."""
    return re.sub(r"\.\d+\.", ".", name)


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float()
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def fit_nu(z: torch.Tensor) -> float:
    """Degrees of freedom of the unit-variance Student-t that best explains standardized values z (grid MLE)."""
    def loglik(nu):
        scale = math.sqrt((nu - 2) / nu)
        return float(torch.distributions.StudentT(nu, 0.0, scale).log_prob(z).mean())
    return max(NU_GRID, key=loglik)


def fit_roles(state: dict[str, torch.Tensor]) -> dict[str, tuple[float, float, float, float, float]]:
    """{role: (nu, row-mean mean, row-mean sd, row log-sd mean, row log-sd sd)} over a trained state dict."""
    by_role: dict[str, list[torch.Tensor]] = {}
    for name, t in state.items():
        if t.is_floating_point() and t.numel() > 1:
            by_role.setdefault(role(name), []).append(_rows(t))
    g = torch.Generator().manual_seed(0)
    fits = {}
    for r, tensors in sorted(by_role.items()):
        means = torch.cat([t.mean(1) for t in tensors])
        sds = torch.cat([t.std(1) for t in tensors]).clamp_min(1e-8)
        z = torch.cat([((t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True).clamp_min(1e-8)).reshape(-1)
                       for t in tensors])
        z = z[torch.randperm(len(z), generator=g)[:FIT_SAMPLE]]
        fits[r] = (fit_nu(z), float(means.mean()), float(means.std()) if len(means) > 1 else 0.0,
                   float(sds.log().mean()), float(sds.log().std()) if len(sds) > 1 else 0.0)
    return fits


@dataclass
class RowLaw:
    """The law one tensor was drawn from: row r is means[r] + sds[r] * sqrt((nu - 2) / nu) * Student-t(nu)."""

    nu: float
    means: torch.Tensor  # (n_rows,) float32, as drawn
    sds: torch.Tensor    # (n_rows,) float32, as drawn


def draw_with_law(shape: tuple[int, ...], fit) -> tuple[torch.Tensor, RowLaw]:
    """A float32 tensor of `shape` drawn row by row from one role's fit (torch's global generator), and the
    per-row parameters drawn for it."""
    nu, mean_mu, mean_sd, logsd_mu, logsd_sd = fit
    n_rows = shape[0] if len(shape) >= 2 else 1
    means = mean_mu + mean_sd * torch.randn(n_rows, 1)
    sds = torch.exp(logsd_mu + logsd_sd * torch.randn(n_rows, 1))
    z = torch.distributions.StudentT(nu).sample((n_rows, max(1, math.prod(shape) // n_rows)))
    values = (means + sds * z * math.sqrt((nu - 2) / nu)).reshape(shape)
    return values, RowLaw(float(nu), means[:, 0], sds[:, 0])


def draw(shape: tuple[int, ...], fit) -> torch.Tensor:
    """A float32 tensor of `shape` drawn row by row from one role's fit (torch's global generator)."""
    return draw_with_law(shape, fit)[0]


def heavy_tailed_state_with_laws(config, fits=None, seed: int = 0
                                 ) -> tuple[dict[str, torch.Tensor], dict[str, RowLaw]]:
    """heavy_tailed_state's state dict (the same tensors), and {name: RowLaw} of every tensor it drew."""
    from model.gpt import GPT

    torch.manual_seed(seed)
    fits = TINY_FIT if fits is None else fits
    state = GPT(config).state_dict()
    laws = {}
    with torch.no_grad():
        for name, t in state.items():
            fit = fits.get(role(name))
            if t.is_floating_point() and t.numel() > 1 and fit is not None:
                values, laws[name] = draw_with_law(tuple(t.shape), fit)
                state[name] = values.to(t.dtype)
    return state, laws


def heavy_tailed_state(config, fits=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of GPT(config) with every float tensor whose role `fits` knows drawn from that fit
    (seeds torch's global generator with `seed`: the same arguments give the same tensors)."""
    return heavy_tailed_state_with_laws(config, fits, seed)[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.heavy_tailed", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="print the per-role fit of a trained model file")
    fit.add_argument("model_file")
    make = sub.add_parser("make", help="write a model file drawn from TINY_FIT")
    make.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", required=True)
    oracle = sub.add_parser("oracle", help="the oracle cross-entropy of a draw's int6/int8 symbols and the lower "
                                           "bound it puts on any lossless artifact (bench.heavy_tailed_oracle)")
    oracle.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    oracle.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.command == "fit":
        from quant.model_file import load_model_file

        fits = fit_roles(load_model_file(args.model_file)[1])
        print("TINY_FIT = {")
        for r, f in fits.items():
            print(f"    {r!r}: ({f[0]}, {f[1]:.4g}, {f[2]:.4g}, {f[3]:.4g}, {f[4]:.4g}),")
        print("}")
    elif args.command == "oracle":
        from bench.heavy_tailed_oracle import oracle_report

        cfg = get_config(args.preset)
        print(oracle_report(cfg, *heavy_tailed_state_with_laws(cfg, seed=args.seed), group_of=role))
    else:
        from common.checkpoint import save_model_file

        cfg = get_config(args.preset)
        save_model_file(args.out, cfg.to_dict(), heavy_tailed_state(cfg, seed=args.seed))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

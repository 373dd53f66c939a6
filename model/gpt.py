"""The seed GPT (PR #598 "11L GEPA", seed-spec §3): embedding front-end, gated U-Net of blocks, tied softcap head.

forward(x, y) -> mean NLL (fp32); per_token_nll(x, y) -> (B, T) fp32 NLL; nll_at(x, positions, targets) -> the
NLL at chosen positions only (sliding-window scoring). The kernel policy is one switch (`set_kernels`: a
kernels.ops.KernelPolicy per op family; `set_backend` for a whole-model one); late QAT is one explicit flag
(`set_late_qat`), a plain attribute on every Linear (`qat_linears`).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from kernels.ops import get_ops
from model.block import Block
from model.config import ModelConfig
from model.embeddings import BigramHash, SmearGate, ValueEmbedding
from model.layers import Linear
from model.rotary import Rotary


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg = dataclasses.replace(cfg)  # own copy: set_backend / set_kernels edit it
        d, backend = cfg.model_dim, cfg.kernel_policy
        self.ops = get_ops(backend)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.bigram = BigramHash(cfg.bigram_buckets, cfg.bigram_dim, d, cfg.bigram_scale_init, backend)
        self.smear = SmearGate(d)
        self.skip_weights = nn.Parameter(torch.ones(cfg.num_skips, d))
        self.skip_gates = nn.Parameter(torch.zeros(cfg.num_skips, d))
        self.value_embed = ValueEmbedding(cfg.vocab_size, cfg.ve_dim, cfg.kv_dim, len(cfg.ve_layers),
                                          cfg.ve_scale_init, backend)
        first_xsa = cfg.num_layers - cfg.xsa_last_n
        self.blocks = nn.ModuleList(
            Block(i, d, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_hidden, cfg.rope_dims, cfg.qk_gain_init,
                  xsa=i >= first_xsa, ln_scale=cfg.ln_scale, backend=backend)
            for i in range(cfg.num_layers)
        )
        self.rotary = Rotary(cfg.rope_dims, cfg.rope_base, cfg.rope_train_seq_len, cfg.seq_len)
        self.ve_slot = {layer: k for k, layer in enumerate(cfg.ve_layers)}
        self._init_weights()

    # ---- init (seed-spec §3.10) -------------------------------------------------------------------
    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.tok_emb_init_std)
        nn.init.zeros_(self.bigram.embed.weight)
        nn.init.normal_(self.value_embed.embed.weight, std=self.cfg.ve_emb_init_std)
        proj_scale = 1.0 / math.sqrt(2 * self.cfg.num_layers)
        for name, module in self.named_modules():
            if not isinstance(module, Linear):
                continue
            if module.zero_init:
                nn.init.zeros_(module.weight)
            elif min(module.weight.shape) >= 64:
                nn.init.orthogonal_(module.weight, gain=1.0)
                if name.endswith(".proj") or ".proj." in name:
                    module.weight.mul_(proj_scale)
            elif name.endswith(".proj") or ".proj." in name:
                # below 64 wide the seed keeps the projections' nominal zero init (only reachable by small configs)
                nn.init.zeros_(module.weight)

    # ---- switches ---------------------------------------------------------------------------------
    def set_backend(self, name: str) -> None:
        """Route every op of the model through kernels.ops.get_ops(name) ("eager" or "triton") from now on."""
        self.set_kernels(name)

    def set_kernels(self, backend: str, kernels: str = "") -> None:
        """Route each op family as the policy `backend` + overrides `kernels` says (kernels.ops.KernelPolicy),
        e.g. set_kernels("triton", "rms_norm=inductor,residual_norm=inductor"); the config records it."""
        cfg = dataclasses.replace(self.cfg, backend=backend, kernels=kernels)  # validates
        ops = get_ops(cfg.kernel_policy)
        for module in self.modules():
            if hasattr(module, "ops"):
                module.ops = ops
        self.cfg = cfg

    def block_linears(self) -> list[tuple[str, Linear]]:
        """(name, module) of the block matrices: the int6 / Muon set."""
        return [(f"blocks.{n}", m) for n, m in self.blocks.named_modules() if isinstance(m, Linear)]

    def qat_linears(self) -> list[tuple[str, Linear]]:
        """(name, module) of every Linear: the fake-quant set of late QAT and of TTT with --ttt-qat.

        PR #598's QAT switch is a class-wide flag on CastedLinear, so it covers the block matrices *and* the
        bigram and value-embedding projections (when built); the tied head is no Linear in either model.
        """
        return [(n, m) for n, m in self.named_modules() if isinstance(m, Linear)]

    def set_late_qat(self, enabled: bool) -> None:
        """Fake-quantize (int6 STE) every `qat_linears()` weight in train-mode forwards while enabled."""
        for _, module in self.qat_linears():
            module.fake_quant = bool(enabled)

    @property
    def late_qat(self) -> bool:
        return any(m.fake_quant for _, m in self.qat_linears())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- forward ----------------------------------------------------------------------------------
    def final_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The normed (B, T, d) hidden states the tied head reads (in the autocast dtype under autocast)."""
        if ids.dim() != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, seq), got {tuple(ids.shape)}")
        cos, sin = self.rotary(ids.size(1))
        x = self.tok_emb(ids) + self.bigram(ids)
        x = self.smear(self.ops.rms_norm(x))
        x0 = x
        ve_shared = self.value_embed(ids) if self.ve_slot else None
        # U-Net: encoder block k's output feeds decoder j = num_enc - 1 - k through a gated skip. Block outputs
        # stay pending (h + mlp_scale * mlp_out, added inside the next norm), so an encoder output is materialized
        # by the next block (keep_input); the last one is the first decoder's own input (skip source None).
        num_enc, pending, skips = self.cfg.num_encoder_layers, None, []
        for i, block in enumerate(self.blocks):
            j = i - num_enc
            skip = None
            if 0 <= j < self.cfg.num_skips:
                skip = (self.skip_gates[j], self.skip_weights[j], skips.pop() if j > 0 else None)
            ve = None
            if i in self.ve_slot:
                ve = ve_shared * self.value_embed.layer_scales[self.ve_slot[i]].to(ve_shared.dtype)
            kept, x, pending = block(x, x0, cos, sin, ve, pending=pending, skip=skip, keep_input=0 < i < num_enc)
            if kept is not None:
                skips.append(kept)
        _, normed = self.ops.residual_norm(x, branch=pending[0], branch_scale=pending[1])
        return normed

    def per_token_nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, T) fp32 NLL of targets y given inputs x."""
        if y.shape != x.shape:
            raise ValueError(f"targets shape {tuple(y.shape)} differs from inputs shape {tuple(x.shape)}")
        h = self.final_hidden(x)
        return self.ops.softcap_cross_entropy(h, self.tok_emb.weight, y, self.cfg.logit_softcap).float()

    def nll_at(self, x: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, K) fp32 NLL of `targets` (B, K) predicted at input `positions` (B, K) of each row of x (B, T).

        The blocks run over whole rows; the head and the loss only at the positions asked for (a sliding window
        scores its last `stride` positions: 64 of 2048 in the seed's eval)."""
        if positions.shape != targets.shape or positions.dim() != 2 or positions.size(0) != x.size(0):
            raise ValueError(f"positions {tuple(positions.shape)} and targets {tuple(targets.shape)} must both be "
                             f"(batch, K) with batch {x.size(0)}")
        h = self.final_hidden(x)
        h = h.gather(1, positions[..., None].expand(-1, -1, h.size(-1)))
        return self.ops.softcap_cross_entropy(h, self.tok_emb.weight, targets, self.cfg.logit_softcap).float()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_token_nll(x, y).mean()

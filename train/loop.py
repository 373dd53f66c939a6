"""The training loop: data and tokenizer checks, model, Muon + AdamW, schedule, EMA, DDP, val, checkpoints, logs.

One optimizer step = `grad_accum` micro-steps per rank (DDP all-reduces only on the last), global grad-norm clip,
Muon + AdamW steps, EMA update. A non-finite train loss stops the run before the optimizer touches the weights,
so the last checkpoint on disk stays good. Before step 1 a fresh run makes the seed's warm-up steps (train.warmup).
The gradient of bigram.scale (in no optimizer) sums over the warm-up and every step and counts toward the clip
norm when tcfg.accumulate_bigram_scale_grad (PR #598's run), else it is cleared every step; checkpoints keep it.
Late QAT fires once the LR multiplier drops below tcfg.late_qat_threshold; it fake-quantizes the training
forwards only with tcfg.late_qat_in_training, and the final model records that it fired (common.provenance), which
makes evaluation's TTT fake-quantize by default, as PR #598's did.
Outputs in OUT: metrics.jsonl, checkpoint.pt, final_model.pt (EMA weights), loss_curve.png, and the run's figures
as one JSON line on stdout.
"""
from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path

import torch

from kernels.autocast import autocast_for
from model.config import ModelConfig
from common.checkpoint import load_checkpoint, save_checkpoint, save_model_file, set_rng_state
from train.compiled import training_module, warm_up
from train.config import TrainConfig
from train.data.loader import DistributedTokenLoader
from common.shards import list_shards, load_validation_tokens
from train.data.tokenizer import build_byte_luts, check_vocab, load_tokenizer
from train.distributed import DistContext, all_reduce_mean, setup_distributed, teardown_distributed
from train.ema import EMA
from train.logging_utils import MetricsLogger, plot_loss_curve, print_final
from train.optim import orphan_parameters
from common.provenance import LATE_QAT_KEY, check_data, check_tokenizer, run_provenance
from train.schedule import lr_multiplier, muon_momentum
from train.step import backward_micro_batches, build_training_model, build_training_optimizers
from train.validation import evaluate
from train.warmup import seed_warmup

CHECKPOINT_NAME, METRICS_NAME, FINAL_MODEL_NAME, CURVE_NAME = (
    "checkpoint.pt", "metrics.jsonl", "final_model.pt", "loss_curve.png")


class TrainingDiverged(RuntimeError):
    """The train loss became NaN or inf; the run stopped and the last checkpoint on disk is the last good state."""


def info(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        print(msg, file=sys.stderr, flush=True)


def resolve_tokenizer(data_dir: Path, tokenizer_path) -> Path:
    path = Path(tokenizer_path) if tokenizer_path else data_dir / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path} (pass --tokenizer, or put tokenizer.model in {data_dir})")
    return path


def run_training(tcfg: TrainConfig, mcfg: ModelConfig, data_dir, out_dir, *, tokenizer_path=None, resume=None,
                 stop_at_step: int | None = None, progress: bool = True, logger_factory=MetricsLogger,
                 compile_backend="inductor") -> dict:
    """Train (or resume) a run; returns the summary dict also printed as the last stdout line (rank 0).

    `logger_factory` builds the metrics logger (a MetricsLogger subclass can also echo each record, as the
    bundled challenge script does with the challenge's log lines). `compile_backend` is torch.compile's backend
    when tcfg.compile is on (train.compiled)."""
    ctx = setup_distributed()
    try:
        return _train(ctx, tcfg, mcfg, Path(data_dir), Path(out_dir), tokenizer_path, resume, stop_at_step, progress,
                      logger_factory, compile_backend)
    finally:
        teardown_distributed(ctx)


def _train(ctx, tcfg, mcfg, data_dir, out_dir, tokenizer_path, resume, stop_at_step, progress, logger_factory,
           compile_backend) -> dict:
    device, world = ctx.device, ctx.world_size
    on_cuda = device.type == "cuda"
    # ---- inputs: fail before any training ----
    list_shards(data_dir, "train")
    list_shards(data_dir, "val")
    tokenizer_file = resolve_tokenizer(data_dir, tokenizer_path)
    sp = load_tokenizer(tokenizer_file)
    check_vocab(sp, mcfg.vocab_size)
    luts = build_byte_luts(sp, mcfg.vocab_size)
    provenance = run_provenance(data_dir, tokenizer_file)  # recorded in checkpoints and the final model
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None and ModelConfig.from_dict({**ckpt["config"], "backend": mcfg.backend,
                                                   "kernels": mcfg.kernels}) != mcfg:  # kernels: same weights
        raise ValueError(f"{resume}: the checkpoint's model config differs from the requested one")
    if ckpt is not None:  # a resumed run continues the loader's position: same data, same tokenizer
        check_data(ckpt.get("provenance"), data_dir, resume)
        check_tokenizer(ckpt.get("provenance"), tokenizer_file, resume)
    seq_len = mcfg.seq_len
    grad_accum = tcfg.local_grad_accum(world)
    loader = DistributedTokenLoader(data_dir, tcfg.batch_tokens, seq_len, ctx.rank, world, grad_accum, device,
                                    mcfg.vocab_size)
    val_tokens = load_validation_tokens(data_dir, seq_len, mcfg.vocab_size)
    if tcfg.val_max_tokens > 0:
        keep = max(min(tcfg.val_max_tokens, val_tokens.numel() - 1) // seq_len, 1) * seq_len
        val_tokens = val_tokens[:keep + 1]
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = functools.partial(autocast_for, device)

    # ---- model, optimizers, EMA ----
    model = build_training_model(tcfg, mcfg, device)
    orphans = orphan_parameters(model)  # bigram.scale: a gradient, no optimizer
    info(ctx, f"model_params:{model.num_params()} preset:{tcfg.model_preset} world_size:{world} "
              f"grad_accum:{grad_accum} batch_tokens:{tcfg.batch_tokens} seq_len:{seq_len} device:{device} "
              f"tok_emb:{tcfg.tok_emb_dtype}")
    muon, adam = build_training_optimizers(model, tcfg)
    ema = EMA(model, tcfg.ema_decay)
    step, train_time_ms = 0, 0.0
    ckpt_path = out_dir / CHECKPOINT_NAME
    last_good = None
    late_qat_fired, orphan_grads = False, {}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        muon.load_state_dict(ckpt["optimizers"]["muon"])
        adam.load_state_dict(ckpt["optimizers"]["adamw"])
        loader.load_state_dict(ckpt["loader"])
        step, train_time_ms = int(ckpt["step"]), float(ckpt["train_time_ms"])
        late_qat_fired = bool(ckpt["late_qat"])
        orphan_grads = ckpt.get("orphan_grads") or {}  # none in checkpoints written before it was kept
        set_rng_state(ckpt["rng"])
        last_good = (Path(resume), step)
        info(ctx, f"resumed from {resume} at step {step}")
        del ckpt
    model.set_late_qat(late_qat_fired and tcfg.late_qat_in_training)
    info(ctx, f"late_qat: {'fired' if late_qat_fired else 'not fired'} (threshold {tcfg.late_qat_threshold}: fires "
              f"when the LR multiplier drops below it, 0 = never; training forwards fake-quantized once fired: "
              f"{tcfg.late_qat_in_training}) | bigram.scale gradient: "
              f"{'accumulates' if tcfg.accumulate_bigram_scale_grad else 'cleared every step'}")

    info(ctx, f"kernels: {mcfg.kernel_policy} | compile: {tcfg.compile}"
              + (f" ({compile_backend}, fullgraph{', inside DDP' if world > 1 else ''})" if tcfg.compile else ""))
    train_model = training_module(model, compile=tcfg.compile, backend=compile_backend, ddp=world > 1, device=device)
    compile_s = None
    if tcfg.compile and step < tcfg.steps:  # the first call compiles: before the timed steps, reported apart
        compile_s = warm_up(train_model, model, (loader.local_tokens // seq_len, seq_len), device, autocast)
        info(ctx, f"compile: warm-up forward+backward {compile_s:.1f}s (not in train_time)")
    if step == 0 and tcfg.warmup_steps > 0:
        seconds = seed_warmup(tcfg.warmup_steps, train_model, model, [muon, adam], loader, grad_accum, world,
                              autocast)
        info(ctx, f"warmup: {tcfg.warmup_steps} steps {seconds:.1f}s, weights, optimizers and loader restored "
                  f"(not in train_time)")
    for name, grad in orphan_grads.items():  # a resumed run continues the gradient it had accumulated
        orphans[name].grad = grad.to(device=device, dtype=orphans[name].dtype)
    if not tcfg.accumulate_bigram_scale_grad:
        for p in orphans.values():
            p.grad = None

    logger = logger_factory(out_dir / METRICS_NAME, enabled=ctx.is_main, append=resume is not None)
    if resume is not None:
        logger.truncate_after(step)
    max_ms = tcfg.max_wallclock_seconds * 1000.0

    def validate() -> tuple[float, float]:
        return evaluate(model, val_tokens, seq_len, luts, tcfg.val_batch_seqs, device, autocast, ctx.rank, world)

    def checkpoint(at_step: int) -> None:
        if ctx.is_main:
            save_checkpoint(ckpt_path, model_config=mcfg.to_dict(), train_config=tcfg.to_dict(),
                            model_state=model.state_dict(), ema_state=ema.state_dict(),
                            optimizer_states={"muon": muon.state_dict(), "adamw": adam.state_dict()},
                            loader_state=loader.state_dict(), step=at_step, train_time_ms=train_time_ms,
                            late_qat=late_qat_fired, provenance=provenance,
                            orphan_grads={name: p.grad for name, p in orphans.items() if p.grad is not None})
        if world > 1:
            torch.distributed.barrier()

    val_loss = val_bpb = None  # None in the summary: not measured (a NaN there is a real NaN)
    if step == 0 and tcfg.val_every > 0:
        val_loss, val_bpb = validate()
        logger.log(step=0, val_loss=val_loss, val_bpb=val_bpb)
        info(ctx, f"step:0 val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f}")

    pbar = None
    if ctx.is_main and progress:
        from tqdm import tqdm
        pbar = tqdm(total=tcfg.steps, initial=step, file=sys.stderr, dynamic_ncols=True, desc="train")
    train_loss_value = float("nan")
    stopped_early = False
    while step < tcfg.steps:
        mult = lr_multiplier(step, tcfg.steps, tcfg.warmdown_steps, tcfg.warmdown_shape, train_time_ms, max_ms)
        if 0 < mult < tcfg.late_qat_threshold and not late_qat_fired:
            late_qat_fired = True
            model.set_late_qat(tcfg.late_qat_in_training)
            info(ctx, f"late_qat: enabled at step {step} (lr multiplier {mult:.4f}); "
                      + ("the training forwards fake-quantize from now on" if tcfg.late_qat_in_training else
                         "training forwards unchanged, as in PR #598's run (its compiled graph never saw the flag); "
                         "recorded for evaluation's TTT"))
            logger.log(step=step, event="late_qat_enabled", lr_mult=mult, in_training=tcfg.late_qat_in_training)
        for opt in (muon, adam):
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult
        mu = muon_momentum(step, tcfg.muon_momentum_start, tcfg.muon_momentum, tcfg.muon_momentum_warmup_steps)
        for group in muon.param_groups:
            group["momentum"] = mu

        t0 = time.perf_counter()
        loss_sum = backward_micro_batches(train_model, loader, grad_accum, world, autocast)
        train_loss_value = all_reduce_mean(loss_sum / grad_accum, world).item()
        if not math.isfinite(train_loss_value):
            where = (f"the last good checkpoint is {last_good[0]} (step {last_good[1]})" if last_good
                     else "no checkpoint had been written yet")
            raise TrainingDiverged(f"training diverged: train loss is {train_loss_value} at step {step + 1}; "
                                   f"stopped before the optimizer step, {where}")
        grad_norm = None  # pre-clip global norm over every gradient, bigram.scale's included (as in PR #598)
        if tcfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        muon.step()
        adam.step()
        muon.zero_grad(set_to_none=True)
        adam.zero_grad(set_to_none=True)
        if not tcfg.accumulate_bigram_scale_grad:
            for p in orphans.values():
                p.grad = None
        ema.update(model)
        if on_cuda:
            torch.cuda.synchronize()
        step_ms = (time.perf_counter() - t0) * 1000.0
        train_time_ms += step_ms
        step += 1

        out_of_time = max_ms > 0 and train_time_ms >= max_ms
        stopped_early = stop_at_step is not None and step >= stop_at_step and step < tcfg.steps
        final = step >= tcfg.steps or out_of_time
        record = {"step": step, "train_loss": train_loss_value, "lr": tcfg.matrix_lr * mult, "lr_mult": mult,
                  "muon_momentum": mu, "tokens_per_s": tcfg.batch_tokens / (step_ms / 1000.0),
                  "train_time_ms": train_time_ms}
        if grad_norm is not None:  # read after the step's sync: no extra wait
            record["grad_norm"] = float(grad_norm)
        if (tcfg.val_every > 0 and step % tcfg.val_every == 0) or final:
            val_loss, val_bpb = validate()
            record.update(val_loss=val_loss, val_bpb=val_bpb)
            info(ctx, f"step:{step} train_loss:{train_loss_value:.4f} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
                      f"train_time:{train_time_ms / 1000:.1f}s")
        if step % max(tcfg.log_every, 1) == 0 or "val_loss" in record or final or stopped_early:
            logger.log(**record)
        if (tcfg.checkpoint_every > 0 and step % tcfg.checkpoint_every == 0) or final or stopped_early:
            checkpoint(step)
            last_good = (ckpt_path, step)
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix(loss=f"{train_loss_value:.3f}", lr=f"{mult:.3f}")
        if final or stopped_early:
            break
    if pbar is not None:
        pbar.close()

    summary = {"event": "final" if not stopped_early else "stopped", "preset": tcfg.model_preset, "step": step,
               "params": model.num_params(), "world_size": world, "grad_accum": grad_accum,
               "train_loss": train_loss_value, "val_loss": val_loss, "val_bpb": val_bpb,
               "train_time_s": train_time_ms / 1000.0,
               "tokens_per_s": tcfg.batch_tokens * step / max(train_time_ms / 1000.0, 1e-9),
               "tokens_seen": tcfg.batch_tokens * step, "late_qat": late_qat_fired, "compile_s": compile_s,
               "checkpoint": str(ckpt_path), "out_dir": str(out_dir)}
    if not stopped_early:
        final_state = ema.model_state(model)
        if ctx.is_main:
            save_model_file(out_dir / FINAL_MODEL_NAME, mcfg.to_dict(), final_state,
                            {**provenance, LATE_QAT_KEY: late_qat_fired})
        model.load_state_dict(final_state)
        ema_val_loss, ema_val_bpb = validate()
        summary.update(ema_val_loss=ema_val_loss, ema_val_bpb=ema_val_bpb,
                       final_model=str(out_dir / FINAL_MODEL_NAME))
        logger.log(step=step, ema_val_loss=ema_val_loss, ema_val_bpb=ema_val_bpb)
        info(ctx, f"ema val_loss:{ema_val_loss:.4f} val_bpb:{ema_val_bpb:.4f} -> {out_dir / FINAL_MODEL_NAME}")
        if ctx.is_main:
            info(ctx, plot_loss_curve(out_dir / METRICS_NAME, out_dir / CURVE_NAME))
    if ctx.is_main:
        print_final(summary)
    return summary

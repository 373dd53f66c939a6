"""The training job: data pipeline (streaming loader, tokenizer, embedded corpus), Muon + AdamW, schedule, EMA,
torchrun DDP and logging. Checkpoints and model files are written in common.checkpoint's format."""

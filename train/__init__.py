"""The training job: data pipeline (shards, streaming loader, tokenizer, embedded corpus), Muon + AdamW,
schedule, EMA, torchrun DDP, checkpoints and logging."""

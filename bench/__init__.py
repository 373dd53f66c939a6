"""Benchmark suite: tokens/s of each kernel, the training step and TTT, side by side with eager PyTorch
and torch.compile, with a committed history."""

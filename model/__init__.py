"""The seed model (PR #598 "11L GEPA") in eager PyTorch, config-driven, with one switch routing its
attention, MLP, norms, loss and quantized matmuls to Triton kernels (`kernels.ops.get_ops`)."""

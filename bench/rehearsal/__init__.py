"""The fake-CUDA rehearsal: what can be known about the GPU path without a GPU, checked before a GPU sees it.

`python -m bench.rehearsal --write` (`make rehearsal`, in its own venv with a CUDA build of torch) runs the seed
model on fake CUDA tensors under CUDA's bf16 autocast for every CUDA kernel policy: the training forward, the
evaluation head, the TTT forward, every Triton op's backward formula, the optimizer step, torch.compile's capture
(and how far AOTAutograd and Inductor get), and projects step time (roofline) and peak memory. It writes
bench/REHEARSAL.md and fails on any error.

fake_cuda.py: fake CUDA model, CUDA autocast without a device, op log, saved activations;
stages.py: the stages; roofline.py: FLOPs, bytes and the per-launch lower bound; projection.py: step time
and peak memory; report.py: the markdown.
"""

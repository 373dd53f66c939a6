"""pytest-benchmark plumbing shared by the bench suites: shapes, the `measure` fixture, import checks.

Runs two ways: `python -m bench` (which calls pytest on this folder) or `pytest bench/ --benchmark-json=F`.
On a GPU, `measure` times each case with bench.timing (do_bench / CUDA events, median, rotating inputs),
records peak memory, TFLOP/s and MFU against the bf16 peak measured once per session, and stores the
figures in the benchmark's `extra_info` (so they land in --benchmark-json and in the history). With
`--bench-quick` (CPU CI) every case runs once at tiny shapes under the Triton interpreter and nothing is
timed; an op module that fails to import is then a failure, so the suite cannot rot unnoticed.
"""
import os

try:  # decide before any kernel import: real GPU kernels when CUDA is present, else the interpreter
    import torch as _torch
    _HAS_CUDA = _torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import contextlib  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from bench import case_log  # noqa: E402
from bench import flops as bench_flops  # noqa: E402
from bench import timing  # noqa: E402
from bench.shapes import MODEL_VARIANTS, get_shapes  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--bench-quick", action="store_true",
                     help="run every case once at tiny shapes on CPU (Triton interpreter); claims no figures")


def pytest_collection_modifyitems(config, items):
    """Without CUDA, only quick mode makes sense: full shapes under the interpreter would take hours."""
    if config.getoption("--bench-quick") or _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="full benchmarks need a CUDA GPU; on CPU run `python -m bench --quick`")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def quick(pytestconfig) -> bool:
    return bool(pytestconfig.getoption("--bench-quick"))


@pytest.fixture(scope="session")
def shapes(quick):
    return get_shapes(quick)


@pytest.fixture(scope="session")
def bf16_peak_tflops(quick):
    """The device's bf16 matmul peak, measured once in this run (None in quick mode)."""
    return None if quick else bench_flops.measure_bf16_peak_tflops()


@pytest.fixture(scope="session")
def import_or_skip(quick):
    """import_or_skip("kernels.attention") -> module; a failed import skips the case (fails it in quick mode)."""
    def load(name: str):
        try:
            return importlib.import_module(name)
        except Exception as err:  # an ImportError, or a kernel module that breaks while importing
            reason = f"{name} is not importable: {type(err).__name__}: {err}"
            if quick:
                pytest.fail(reason)
            pytest.skip(reason)
    return load


@pytest.fixture(scope="session")
def compile_fn(quick):
    """torch.compile as the benchmarks use it: static shapes; aot_eager in quick mode (proves wiring, fast)."""
    def compile_(fn):  # static shapes and one graph, as train.loop compiles the model
        return torch.compile(fn, dynamic=False, fullgraph=True, backend="aot_eager" if quick else "inductor")
    return compile_


@pytest.fixture(scope="session")
def autocast(shapes):
    """bf16 autocast (and TF32) on the GPU, as train.loop runs (spec §3.12); plain fp32 in quick mode."""
    if shapes.quick:
        return contextlib.nullcontext
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def build_model(shapes, import_or_skip):
    """build_model(variant) -> (config, GPT on the bench device, compiled?): same seed, so same weights per variant."""
    def build(variant: str):
        backend, compiled = MODEL_VARIANTS[variant]
        config, gpt = import_or_skip("model.config"), import_or_skip("model.gpt")
        if backend == "triton":
            import_or_skip("kernels.triton_ops")
        cfg = config.get_config(shapes.model_preset, backend=backend, **shapes.model_overrides)
        torch.manual_seed(0)
        return cfg, gpt.GPT(cfg).to(shapes.device), compiled
    return build


@pytest.fixture(scope="session")
def token_batches(shapes):
    """token_batches(n_seqs, seq_len, vocab) -> [(x, y), ...] of random tokens, identical for every variant."""
    def make(n_seqs: int, seq_len: int, vocab: int) -> list[tuple]:
        generator = torch.Generator().manual_seed(1234)
        batches = []
        for _ in range(shapes.step_input_sets):
            tokens = torch.randint(0, vocab, (n_seqs, seq_len + 1), generator=generator).to(shapes.device)
            batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
        return batches
    return make


@pytest.fixture
def measure(benchmark, shapes, bf16_peak_tflops):
    """measure(case, variant, fn, input_sets, tokens, ...) times fn(*input_sets[i]) and records the figures.

    tokens, flops and bytes_moved are per call; step=True times whole training/TTT steps with CUDA events.
    A test may call it more than once (several cases on one compiled model): every case goes to the case
    log (bench.case_log) as soon as it is measured; the first also to pytest-benchmark's `extra_info`.
    """
    first = []

    def run(case: str, variant: str, fn, input_sets: list[tuple], tokens: int, shape: str,
            flops: float | None = None, bytes_moved: float | None = None, step: bool = False) -> dict:
        use_benchmark = not first
        first.append(case)
        if use_benchmark:
            benchmark.group = case
        if shapes.quick:  # one call, no timing: this only proves that the case runs
            if use_benchmark:
                benchmark.extra_info.update(case=case, variant=variant, shape=shape, quick=True)
                benchmark.pedantic(fn, args=input_sets[0], rounds=1, iterations=1)
            else:
                fn(*input_sets[0])
            return {}
        try:
            for args in input_sets:  # warm-up: compilation, autotuning, allocator
                fn(*args)
            ms = (timing.step_ms if step else timing.kernel_ms)(fn, input_sets)
            peak = timing.peak_memory_mib(fn, input_sets[0])
        except torch.cuda.OutOfMemoryError:
            pytest.skip(f"{case} [{variant}] ran out of GPU memory at {shape}")
        seconds = ms * 1e-3
        tflops = flops / seconds / 1e12 if flops else None
        figures = dict(case=case, variant=variant, shape=shape, ms=ms, tokens_per_s=tokens / seconds,
                       tflops=tflops, gbps=bytes_moved / seconds / 1e9 if bytes_moved else None,
                       peak_mib=peak, mfu=bench_flops.mfu(tflops, bf16_peak_tflops))
        case_log.append_case(figures, bf16_peak_tflops)
        if not use_benchmark:
            return figures
        benchmark.extra_info.update(figures, bf16_peak_tflops=bf16_peak_tflops)

        def synced(*args):
            fn(*args)
            torch.cuda.synchronize()
        benchmark.pedantic(synced, args=input_sets[0], rounds=1, iterations=1)  # wall-clock cross-check
        return figures

    yield run
    torch._dynamo.reset()  # drop compiled graphs (and their memory) before the next case
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

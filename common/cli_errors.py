"""What every CLI does with bad input: one `error: ...` line on stderr, a non-zero exit, never a traceback.

`run_cli(fn)` runs a command's body and turns what escapes it into that line: refusals (CLIError), bad values
(ValueError), file problems (OSError: missing, exists, not a directory, permission), a missing CUDA, Ctrl-C
(exit 130) and, last, any other exception (exit 3, named as unexpected; TRITON_GOLF_TRACEBACK=1 re-raises it
for a bug report). `ArgumentParser` prints argparse's own errors as one line too. The argparse types here
(`positive_int`, `finite_float`, ...) and the output-path checks let a command refuse bad arguments and
unwritable or occupied outputs before it starts any work, and `nonfinite_figures` finds a NaN in what a
command reports, which makes it exit non-zero.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

EXIT_ERROR = 1        # bad input, missing or refused file, non-finite figure
EXIT_USAGE = 2        # an argument argparse or a range check refused
EXIT_UNEXPECTED = 3   # an exception no check anticipated (a bug): still one line
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "TRITON_GOLF_TRACEBACK"
_MAX_LINE = 600


class CLIError(Exception):
    """A refusal with a message meant for the user (an occupied output, mismatched provenance, ...)."""


def one_line(message: object) -> str:
    """The message on one line (torch and zstd errors span several), shortened past _MAX_LINE characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= _MAX_LINE else text[:_MAX_LINE - 3] + "..."


def say_error(message: object) -> None:
    text = one_line(message)
    print(text if text.startswith("error: ") else f"error: {text}", file=sys.stderr, flush=True)


def _describe_os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    return str(exc)


def run_cli(fn: Callable[[], object], on_interrupt: Callable[[], str] | None = None):
    """fn()'s result, or the exit code after printing the one error line for whatever escaped it.

    `on_interrupt` supplies the Ctrl-C message (e.g. which checkpoint to resume from)."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end a progress bar's line
        say_error(on_interrupt() if on_interrupt else "interrupted (Ctrl-C)")
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            raise
        say_error(exc.code)
        return EXIT_ERROR
    except (CLIError, ValueError) as exc:
        if os.environ.get(TRACEBACK_ENV):
            raise
        say_error(exc)
        return EXIT_ERROR
    except OSError as exc:
        if os.environ.get(TRACEBACK_ENV):
            raise
        say_error(_describe_os_error(exc))
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the point of this function: no traceback reaches the user
        if os.environ.get(TRACEBACK_ENV):
            raise
        say_error(f"unexpected {type(exc).__name__}: {one_line(exc)} (rerun with {TRACEBACK_ENV}=1 for the "
                  "traceback)")
        return EXIT_UNEXPECTED


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its error as one line (`error: PROG: MESSAGE (see PROG --help)`), exit status 2."""

    def error(self, message: str):
        say_error(f"{self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


# ---- argparse types: a bad value is refused while parsing, before any work ----

def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def unit_interval(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}")
        return value
    parse.__name__ = f"int in [{lo}, {hi}]"
    return parse


# ---- outputs: checked before the work, so a bad path never costs a run ----

def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path) -> None:
    """`path` does not exist yet: its nearest existing ancestor must be a writable directory."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise CLIError(f"cannot create {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CLIError(f"cannot create {path}: no write permission in {ancestor}")


def check_output_file(path, *, overwrite: bool = False, inputs: Iterable = (), flag: str = "--out") -> Path:
    """Refuse an output file that is a directory, exists (unless `overwrite`), is one of `inputs` (unless
    `overwrite`), or cannot be created; returns it as a Path."""
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).exists() and path.exists() and path.samefile(source) \
                and not overwrite:
            raise CLIError(f"{flag} {path} is the file this command reads; writing there would replace it "
                           "(pass --overwrite to do that anyway)")
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a directory; give a file path")
    if path.exists():
        if not overwrite:
            raise CLIError(f"{flag} {path} exists; pass --overwrite to replace it")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise CLIError(f"cannot replace {path}: no write permission in {path.parent}")
        return path
    _check_creatable(path)
    return path


def check_output_dir(path, flag: str = "--out") -> Path:
    """Refuse an output directory that is a file or cannot be created or written; returns it as a Path."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise CLIError(f"{flag} {path} is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CLIError(f"cannot write in {flag} {path}: permission denied")
        return path
    _check_creatable(path / "x")
    return path


def check_input_file(path, what: str) -> Path:
    """A file that must exist and be a regular file (a directory gets its own message)."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise CLIError(f"{what} not found: {path}")
    return path


def check_cuda_device(device: str) -> None:
    """Refuse a CUDA device when torch has no CUDA (else torch fails later with a multi-line RuntimeError)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: this torch has no CUDA device available; use --device cpu")


def nonfinite_figures(figures: dict, prefix: str = "") -> list[str]:
    """Names of the float figures (nested dicts included) that are NaN or infinite."""
    bad = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(name)
        elif isinstance(value, dict):
            bad += nonfinite_figures(value, prefix=f"{name}.")
    return bad


def fail_on_nonfinite(figures: dict, keys: Iterable[str] | None = None) -> int:
    """0, or EXIT_ERROR after one error line when a reported figure (among `keys`, default all) is not finite."""
    bad = nonfinite_figures(figures if keys is None else {k: figures[k] for k in keys if k in figures})
    if bad:
        say_error(f"non-finite figures in the result: {', '.join(bad)}")
        return EXIT_ERROR
    return 0

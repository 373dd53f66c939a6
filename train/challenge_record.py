"""What a train_gpt.py run records about itself, for its records folder: the machine, the code, and which
files it writes.

`quant submit` takes hardware, library versions, world size and timings from these records (run_info.json),
never from what a user types, and ships the very script that ran: the run keeps a copy of it beside its
outputs, with its byte count and sha256, so the log's "Code size" line, the README and submission.json name
one file.
"""
from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import torch

from common.cli_errors import CLIError

SCRIPT_COPY = "train_gpt.py"
RUN_OUTPUTS = ("metrics.jsonl", "checkpoint.pt", "final_model.pt", "final_model.int6.ptz", "quant.json",
               "eval.json", "ttt_chunks.jsonl", "ttt_chunks.png", "run_info.json", "loss_curve.png", SCRIPT_COPY)


def environment(ctx) -> dict:
    """The machine and software the run used: device name, world size and library versions."""
    import triton

    if ctx.device.type == "cuda":
        device_name = torch.cuda.get_device_name(ctx.device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()})"
    return {"hardware": f"{ctx.world_size}x {device_name}", "device_name": device_name,
            "world_size": ctx.world_size, "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "platform": platform.platform()}


def code_identity(code_path) -> dict | None:
    """{"path", "bytes", "sha256"} of the script that runs (None when the package runs without a bundle)."""
    if not code_path:
        return None
    data = Path(code_path).read_bytes()
    return {"path": str(code_path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def refuse_occupied(out_dir: Path, run_id: str) -> None:
    """Refuse an OUT_DIR that already holds any file this run would write (another run's, or a records
    folder's own files): nothing is overwritten. Called on every rank before the process group forms, so no
    rank sees files another rank has just written."""
    taken = [name for name in (*RUN_OUTPUTS, f"logs/{run_id}.txt") if (out_dir / name).exists()]
    if taken:
        raise CLIError(f"OUT_DIR {out_dir} already holds {', '.join(taken[:3])}"
                       f"{' ...' if len(taken) > 3 else ''}; set OUT_DIR (or RUN_ID) to a new folder")

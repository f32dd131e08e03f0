"""The run log: rank 0 prints and appends to ``run_dir/log.txt``, optionally mirroring metrics to wandb."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from errors import writing

REPO = Path(__file__).resolve().parents[1]


class RunLog:
    """``log(msg)`` prints on rank 0 and appends to ``path``; ``metrics`` goes to wandb when enabled."""

    def __init__(self, enabled: bool, path: Path, wandb_run: dict | None = None) -> None:
        """``wandb_run``: keyword arguments for ``wandb.init`` (project, name, config), or None for no wandb."""
        self.enabled, self.path, self.wandb = enabled, path, None
        if enabled and wandb_run is not None:
            import wandb  # lazy: importing wandb costs ~0.7 s

            self.wandb = wandb.init(**wandb_run)

    def __call__(self, msg: str, console: bool = True) -> None:
        if not self.enabled:
            return
        if console:
            print(msg, flush=True)
        with writing(self.path), open(self.path, "a") as f:  # a full disk names the log file
            f.write(msg + "\n")

    def metrics(self, step: int, **values: float) -> None:
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def header(self, settings: dict) -> None:
        """The log starts with the code that produced it (train.py, model/, training/), versions and hardware."""
        sources = [
            REPO / "train.py",
            *sorted((REPO / "model").glob("*.py")),
            *sorted((REPO / "training").glob("*.py")),
        ]
        for src in sources:
            self(f"==> {src.relative_to(REPO)}\n{src.read_text()}", console=False)
        hw = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
        self(f"python {platform.python_version()} torch {torch.__version__} on {hw}, {os.cpu_count()} cpus")
        self(json.dumps(settings, sort_keys=True), console=False)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()

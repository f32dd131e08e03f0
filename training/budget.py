"""How long training runs: a stopwatch that pauses for validation, and a step budget that follows the clock.

``--max-train-seconds`` is turned into a step count, so the lr schedule and a resume stay deterministic: the time per
step is measured over at least ``CALIBRATION_STEPS`` steps and 10% of the budget, after skipping the first
``CALIBRATION_SKIP`` (slower) steps, and measured again at 90% of the stable phase, before the cool-down starts. The
lr is constant until then, so re-counting does not change the schedule already followed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

CALIBRATION_SKIP, CALIBRATION_STEPS = 3, 10


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock reading includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class Stopwatch:
    """Timed training milliseconds, starting from ``elapsed_ms`` when ``start()`` is called (or at once with
    ``running``); the clock stops while ``paused()`` (validation, checkpoints) and after ``stop()``. Starting and
    stopping synchronise the device first, so queued GPU work is counted where it belongs."""

    def __init__(self, device: torch.device, elapsed_ms: float = 0.0, running: bool = False) -> None:
        self.device, self._banked, self._t0 = device, elapsed_ms, time.perf_counter()
        self._running = running

    @property
    def elapsed_ms(self) -> float:
        if not self._running:
            return self._banked
        return self._banked + 1000 * (time.perf_counter() - self._t0)

    def stop(self) -> None:
        if self._running:
            sync(self.device)
            self._banked, self._running = self.elapsed_ms, False

    def start(self) -> None:
        if not self._running:
            sync(self.device)
            self._t0, self._running = time.perf_counter(), True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()


@dataclass
class StepBudget:
    """The run's length in optimizer steps, ``total_steps``, at most ``max_steps``.

    With ``seconds`` > 0 and a run starting at step 0, ``update`` re-counts ``total_steps`` from the measured time
    per step: total = step + (budget − elapsed) / ms_per_step, clipped to [step, max_steps].
    """

    total_steps: int
    max_steps: int
    seconds: float = 0.0
    cooldown_frac: float = 0.0
    calibrating: bool = False
    _mark_ms: float = 0.0
    _checkpoints_ms: list[float] = field(default_factory=list)

    @classmethod
    def create(
        cls, max_steps: int, seconds: float, cooldown_frac: float, start_step: int = 0, total_steps=None
    ):
        budget_ms = 1000 * seconds
        at = [0.1 * budget_ms] + ([0.9 * (1 - cooldown_frac) * budget_ms] if cooldown_frac < 0.8 else [])
        return cls(
            total_steps=max_steps if total_steps is None else total_steps,
            max_steps=max_steps,
            seconds=seconds,
            cooldown_frac=cooldown_frac,
            calibrating=bool(seconds) and start_step == 0,
            _checkpoints_ms=at,
        )

    def update(self, step: int, elapsed_ms: float, agree: Callable[[int], int]) -> str | None:
        """After optimizer step ``step`` at ``elapsed_ms`` of timed training; a log line when re-counted.

        ``agree`` reduces a step count over ranks (the minimum), so every rank stops at the same step.
        """
        if not self.calibrating:
            return None
        if step == CALIBRATION_SKIP:
            self._mark_ms = elapsed_ms
        if step < CALIBRATION_SKIP + CALIBRATION_STEPS or elapsed_ms < self._checkpoints_ms[0]:
            return None
        self._checkpoints_ms.pop(0)
        self.calibrating = bool(self._checkpoints_ms)
        ms_per_step = (elapsed_ms - self._mark_ms) / (step - CALIBRATION_SKIP)
        fit = step + int((1000 * self.seconds - elapsed_ms) / ms_per_step)
        self.total_steps = agree(max(min(self.max_steps, fit), step))
        return f"budget {self.seconds:.0f}s at {ms_per_step:.0f}ms/step: {self.total_steps} steps"

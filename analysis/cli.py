"""Small argparse helpers shared by the analysis command lines."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: …)" only for options whose default is a real value (not None / False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def int_list(text: str) -> tuple[int, ...]:
    """'8,32, 64' -> (8, 32, 64); positive integers only."""
    values = any_int_list(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def any_int_list(text: str) -> tuple[int, ...]:
    """'0,2' -> (0, 2)."""
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0); at least one number."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0 = torch's default). On shared cores one thread is fastest: multi-threaded "
        "small linear algebra (the ALS solves) slows down many times when the cores are busy",
    )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with n torch CPU threads (0: leave as is), restoring the previous count afterwards."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

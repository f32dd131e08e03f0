"""Log axes without positive data: a barely trained checkpoint used to crash the report with matplotlib's
"Data cannot be log-scaled because all values are <= 0" (its KLs all round to ≤ 0 in float32)."""

import math

import matplotlib.pyplot as plt
import numpy as np

from analysis import plots
from analysis.faithfulness import FaithfulnessPoint, LayerFaithfulness


def layer(i: int, kls: list[float], noise: list[float]) -> LayerFaithfulness:
    points = [
        FaithfulnessPoint("als", r, f"rank {r}", 0.5, 0.5, False, kl, kn, 0.0, 4.0, 1e-3, 0.5)
        for r, kl, kn in zip((16, 64, 160, 256), kls, noise, strict=True)
    ]
    return LayerFaithfulness(i, 4.0, -2.5e-8, points)


def render(fig) -> None:
    """Draw it (where matplotlib raised) and encode a PNG."""
    fig.canvas.draw()
    plots.save_figure(fig, "/dev/null")


def test_log_axis_falls_back_to_linear_without_positive_values():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [-1e-8, 0.0, -3e-9])
    assert not plots.log_axis(ax, "y", [-1e-8, 0.0, -3e-9], [math.nan])
    assert ax.get_yscale() == "linear"
    render(fig)
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [-1e-8, 2e-7, 0.0])
    assert plots.log_axis(ax, "y", [-1e-8, 2e-7, 0.0]) and ax.get_yscale() == "log"
    render(fig)


def test_faithfulness_figures_draw_when_every_kl_rounds_below_zero():
    """The KLs measured on a step-2 demo checkpoint: all in [-7e-8, 0], noise floors too."""
    rng = np.random.default_rng(0)
    faiths = [layer(i, list(-rng.uniform(0, 7e-8, 4)), list(-rng.uniform(0, 6e-8, 4))) for i in range(4)]
    fig = plots.plot_faithfulness_overview(faiths)
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "linear"]
    render(fig)
    render(plots.plot_rank_sweep(faiths[0], 320))
    mixed = [layer(0, [1e-3, -1e-8, 2e-4, 0.0], [2e-3, 1e-3, -1e-9, 1e-4])]  # some positive: log, rest masked
    fig = plots.plot_faithfulness_overview(mixed)
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "log"]
    render(fig)

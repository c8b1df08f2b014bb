"""The benchmark's figures: one PNG per plotted metric (metric vs epsilon, one line per
generator) and benchmark.png with every panel, written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import atomic_path
from fedsynth.simulations.benchmark_settings import GENERATORS, LABELS, METRICS, eps_key
from fedsynth.simulations.benchmark_summary import SummaryEntry

NON_PRIVATE_X = 30.0  # where "non-private" sits on the log-epsilon axis


def plot(summary: list[SummaryEntry], out: Path) -> list[str]:
    """Write the PNGs into ``out``; their file names, benchmark.png last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epsilons = sorted({e["epsilon"] for e in summary}, key=eps_key)
    xs = {eps: (NON_PRIVATE_X if eps is None else float(eps)) for eps in epsilons}
    plotted = [(m.key, m.title) for m in METRICS if m.plotted]
    files = []
    cols = 3
    rows_n = math.ceil(len(plotted) / cols)
    big, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    for i, (key, title) in enumerate(plotted):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for target in (ax, axes[i // cols][i % cols]):
            _draw(target, summary, key, title, xs)
        fig.tight_layout()
        name = f"plot_{key}.png"
        _save(fig, out / name)
        plt.close(fig)
        files.append(name)
    for j in range(len(plotted), rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    big.tight_layout()
    _save(big, out / "benchmark.png")
    plt.close(big)
    return [*files, "benchmark.png"]


def _draw(ax: Any, summary: list[SummaryEntry], key: str, title: str,
          xs: dict[float | None, float]) -> None:
    for gen in GENERATORS:
        pts = [(xs[e["epsilon"]], e[key]["mean"], e[key]["sd"] or 0.0) for e in summary
               if e["generator"] == gen and e["status"] == "ok" and e[key]["mean"] is not None]
        if not pts:
            continue
        pts.sort()
        x, y, err = zip(*pts, strict=True)
        # one colour per generator in every panel, also when a generator has no point there
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=LABELS[gen],
                    color=f"C{GENERATORS.index(gen)}")
    ax.set_xscale("log")
    ax.set_xticks(list(xs.values()))
    ax.set_xticklabels(["non-private" if e is None else f"{e:g}" for e in xs])
    ax.set_xlabel("epsilon")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)

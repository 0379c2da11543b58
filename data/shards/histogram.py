"""The label histogram of a shard set: how Zipfian the kept labels are, and which dominate."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from data.figure_png import save_figure

TOP_LABELS = 30


def plot_label_histogram(counts: Sequence[int], tags: Sequence[str], path: str | Path) -> None:
    """Rank-frequency plot (log-log) of all labels beside a bar chart of the most frequent ones."""
    # Imported here: only finalizing a build draws, and matplotlib costs half a second to import.
    # Figure + Agg canvas, not pyplot: no global backend switch, no figure registry to leak into.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts, kind="stable")
    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)
    ranks, top = figure.subplots(1, 2)
    nonzero = counts[order][counts[order] > 0]
    if nonzero.size:
        ranks.loglog(np.arange(1, nonzero.size + 1), nonzero, marker=".", linestyle="none")
    ranks.set(xlabel="label rank", ylabel="train images", title=f"{nonzero.size} of {counts.size} labels used")
    head = order[:TOP_LABELS]
    top.barh(range(len(head))[::-1], counts[head])
    top.set_yticks(range(len(head))[::-1], [tags[i] for i in head], fontsize=7)
    top.set(xlabel="train images", title=f"top {len(head)} labels")
    # Fixed margins: tight_layout measures every tick label and costs seconds on a big vocabulary.
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.45)
    with warnings.catch_warnings():
        # Tags in scripts the default font lacks (CJK, ...) draw as boxes; one warning per glyph
        # would bury the build's summary.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        save_figure(figure, path, dpi=100)

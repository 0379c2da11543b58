"""The hashtag distribution training actually saw, against the natural one of the shards.

The loader counts, per label, the images carrying it that it delivered (after resampling); the
shards' info.json holds the natural per-label counts. Plotted by natural rank (log-log), the
realised shares should lie on the resampling target p_h ∝ n_h^q (for images with one hashtag
exactly; an image with several carries its other hashtags along, which bends the tail up a little).
For a mixture of shard sets the target is the one its weights aim at
(:func:`data.loader.resampling.mixture_label_distribution`), and "natural" is the union's counts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from data.figure_png import save_figure
from data.loader.resampling import label_distribution, mixture_label_distribution, total_variation
from data.shards.directory import ShardSource


def target_shares(source: ShardSource, q: float | None) -> np.ndarray:
    """The label shares the stream aims at: p ∝ n^q over the shards' counts (the natural shares when
    resampling is off), or a mixture's, set by its weights."""
    exponent = 1.0 if q is None else q
    if source.parts:
        return mixture_label_distribution([p.label_counts for p in source.parts], source.weights, exponent)
    return label_distribution(source.label_counts, exponent)


def realised_vs_target(realised: Sequence[int], target: Sequence[float]) -> float:
    """Total variation between the realised label shares and the target (:func:`target_shares`)."""
    return total_variation(realised, target)


def target_name(source: ShardSource, q: float | None) -> str | None:
    """The target's legend entry, or None when the target is the natural distribution itself."""
    if source.parts:
        return "target of the mixture's weights" + ("" if q is None else f", p ∝ n^{q:g} per set")
    return None if q is None else f"target p ∝ n^{q:g}"


def plot_label_distribution(realised: Sequence[int], natural: Sequence[int], target: Sequence[float],
                            name: str | None, path: str | Path) -> Path:
    """A log-log PNG of label share against natural rank: natural, target (drawn when ``name`` is
    given, see :func:`target_name`) and realised."""
    # Figure + Agg canvas rather than pyplot: no global backend, no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    realised = np.asarray(realised, dtype=np.float64)
    natural = np.asarray(natural, dtype=np.float64)
    order = np.argsort(-natural, kind="stable")
    used = order[natural[order] > 0]
    ranks = np.arange(1, used.size + 1)
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.loglog(ranks, natural[used] / natural.sum(), label="natural (info.json)", color="0.5")
    if name is not None:
        axes.loglog(ranks, np.asarray(target, dtype=np.float64)[used], label=name, color="C1")
    if realised.sum() > 0:
        share = realised[used] / realised.sum()
        shown = share > 0
        axes.loglog(ranks[shown], share[shown], marker=".", linestyle="none", label="realised (sampled)",
                    color="C0")
    axes.set(xlabel="label rank (natural frequency)", ylabel="share of label occurrences",
             title=f"sampled label distribution ({int(realised.sum()):,} label occurrences)")
    axes.legend()
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    return save_figure(figure, path, dpi=100)

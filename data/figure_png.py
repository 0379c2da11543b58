"""A matplotlib figure as a PNG file, written atomically: the one way every plot of the project is saved.

A figure is rendered to memory first and then written with :func:`data.atomic_write.write_bytes`, so
a reader never sees half a PNG, and a run killed while plotting leaves the previous file whole.
Works with any figure (a bare ``Figure`` on an Agg canvas, or pyplot's); closing a pyplot figure is
left to the caller that opened it.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from data.atomic_write import write_bytes


def figure_png(figure: Any, dpi: float) -> bytes:
    """The PNG bytes of ``figure`` at ``dpi`` dots per inch."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(figure: Any, path: str | Path, dpi: float) -> Path:
    """Write ``figure`` to ``path`` as a PNG at ``dpi``, atomically; returns the path."""
    path = Path(path)
    write_bytes(path, figure_png(figure, dpi))
    return path

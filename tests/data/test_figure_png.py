"""data/figure_png.py: a figure becomes a PNG of the asked size, written atomically over an old one."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from data.figure_png import figure_png, save_figure


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots().plot([1, 2, 3], [3, 1, 2])
    return figure


def test_png_has_the_size_the_dpi_asks_for() -> None:
    png = figure_png(_figure(4, 3), dpi=50)
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.size) == ("PNG", (200, 150))


def test_save_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    path.write_bytes(b"an older plot")
    assert save_figure(_figure(2, 1), path, dpi=100) == path
    with Image.open(path) as image:
        assert image.size == (200, 100)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]

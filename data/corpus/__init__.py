"""Corpus sources by name: ``open_corpus(source, path, **options)`` builds the reader for ``--source``.

| source | reader | options |
|---|---|---|
| ``yfcc100m`` | :class:`data.corpus.yfcc.YfccReader` | layout, machine_tags, include_videos, licenses |
| ``jsonl``, ``csv``, ``tsv``, ``parquet`` | :class:`data.corpus.table.TableReader` | key_field, tags_field, image_field, tags_delimiter |
| ``img2dataset`` | :class:`data.corpus.img2dataset.Img2DatasetReader` | tags_field, tags_delimiter |

Options are named like the command-line flags (``--tags-field`` -> ``tags_field``); an option left
at ``None`` means "not given" and is not passed on, so each reader keeps its own default. Readers
are imported only when asked for, so a source's dependencies load only when it is used.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from data.corpus.record import CorpusReader
from data.errors import UserError

TABLE_SOURCES = ("jsonl", "csv", "tsv", "parquet")
SOURCES = ("yfcc100m", *TABLE_SOURCES, "img2dataset")

_OPTIONS = {
    "yfcc100m": ("layout", "machine_tags", "include_videos", "licenses"),
    **{source: ("key_field", "tags_field", "image_field", "tags_delimiter") for source in TABLE_SOURCES},
    "img2dataset": ("tags_field", "tags_delimiter"),
}


def _yfcc(path: str | os.PathLike, **options: Any) -> CorpusReader:
    from data.corpus.yfcc import YfccReader
    return YfccReader(path, **options)


def _table(source: str) -> Callable[..., CorpusReader]:
    def open_table(path: str | os.PathLike, **options: Any) -> CorpusReader:
        from data.corpus.table import TableReader
        return TableReader(path, format=source, **options)
    return open_table


def _img2dataset(path: str | os.PathLike, **options: Any) -> CorpusReader:
    from data.corpus.img2dataset import Img2DatasetReader
    return Img2DatasetReader(path, **options)


_FACTORIES: dict[str, Callable[..., CorpusReader]] = {
    "yfcc100m": _yfcc, **{source: _table(source) for source in TABLE_SOURCES}, "img2dataset": _img2dataset,
}


def open_corpus(source: str, path: str | os.PathLike, **options: Any) -> CorpusReader:
    """The reader of ``source`` over ``path``; options that are ``None`` are left to its defaults."""
    if source not in _FACTORIES:
        raise UserError(f"unknown corpus source {source!r}; use one of: {', '.join(SOURCES)}")
    given = {name: value for name, value in options.items() if value is not None}
    wrong = sorted(set(given) - set(_OPTIONS[source]))
    if wrong:
        flag = "--" + wrong[0].replace("_", "-")
        valid = ", ".join("--" + o.replace("_", "-") for o in _OPTIONS[source]) or "none"
        raise UserError(f"{flag} does not apply to --source {source} (its options: {valid}); drop it")
    return _FACTORIES[source](path, **given)

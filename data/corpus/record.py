"""The corpus record and the reader protocol every corpus source implements.

A corpus is read in *chunks*: small picklable descriptions of a piece of the input (a byte range
of a TSV with its first line number, a Parquet row group, one img2dataset tar). ``read_chunk`` turns
one chunk into a :class:`RecordBatch` in columnar form, so that the vocabulary counter can fan the
chunks out to worker processes and stay vectorised, while the shard builder iterates
:class:`Record` objects built from the same batches. Both paths share one parser per source.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import pyarrow as pa

from data.skip_report import SkipReport
from data.tar_member import TarMember

# How a reader stores tags (``CorpusReader.tag_encoding``), as far as the vocabulary counter's Arrow
# kernels (data/vocab/tag_arrays.py) need to know; None: unknown to them, every tag goes through
# ``decode_tag`` in Python.
PLAIN = "plain"            # decode_tag is the identity
URL_PLUS = "url-plus"      # decode_tag is urllib.parse.unquote_plus

# Where a record's image lives: a file path, a tar member, the encoded bytes themselves, or a URL
# (YFCC100M rows carry their download URL; the shard builder resolves it against an image mirror).
ImageRef = Union[Path, TarMember, bytes, str, None]


@dataclass
class Record:
    """One corpus item: stable unique ``key``, decoded raw ``tags``, an image reference, metadata."""

    key: str
    tags: list[str]
    image: ImageRef = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordBatch:
    """A chunk of records in columnar form.

    ``tags`` holds each row's tags *as written in the source* (for YFCC100M still URL-encoded):
    decoding is applied per distinct value with the reader's ``decode_tag``, which is far cheaper
    than per occurrence. ``malformed`` lists broken rows, as (line or row number, reason);
    ``skipped`` counts well-formed rows the reader's options left out (videos, licences), by reason.
    """

    keys: pa.Array
    tags: pa.ListArray
    images: list[ImageRef] | None = None
    meta: pa.Table | None = None
    malformed: list[tuple[int, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


class CorpusReader(abc.ABC):
    """A corpus source. Subclasses must be picklable (plain option fields) so worker processes can
    call ``read_chunk`` on chunks produced in the parent."""

    #: name used by ``--source`` on the command line
    source: str = ""
    #: how ``decode_tag`` decodes (PLAIN, URL_PLUS, or None for any other way)
    tag_encoding: str | None = PLAIN

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A reader that decodes tags its own way and does not say how is unknown to the kernels.
        super().__init_subclass__(**kwargs)
        if "decode_tag" in cls.__dict__ and "tag_encoding" not in cls.__dict__:
            cls.tag_encoding = None

    @abc.abstractmethod
    def chunks(self) -> Iterator[Any]:
        """Picklable descriptions of the pieces of the input, in corpus order."""

    @abc.abstractmethod
    def read_chunk(self, chunk: Any, tags_only: bool = False) -> RecordBatch:
        """Parse one chunk; with ``tags_only`` the reader may skip keys' metadata and images."""

    def decode_tag(self, raw: str) -> str:
        """Turn a tag as stored in the source into the user's text (identity by default)."""
        return raw

    def describe(self) -> dict[str, Any]:
        """What vocab.json and info.json record about this corpus (source, input, options)."""
        return {"source": self.source}

    def records(self) -> Iterator[Record]:
        """Every well-formed record, in corpus order, with decoded tags."""
        decode: Callable[[str], str] = self.decode_tag
        for chunk in self.chunks():
            batch = self.read_chunk(chunk)
            keys = batch.keys.to_pylist()
            tags = batch.tags.to_pylist()
            meta = batch.meta.to_pylist() if batch.meta is not None else None
            for i, key in enumerate(keys):
                yield Record(
                    key=key,
                    tags=[decode(t) for t in (tags[i] or ())],
                    image=batch.images[i] if batch.images is not None else None,
                    meta=meta[i] if meta is not None else {},
                )


@dataclass
class MalformedReport(SkipReport):
    """Malformed rows by reason; the examples are their line (or row) numbers, the first 1,000."""

    max_examples: int = 1000

    def extend(self, rows: list[tuple[int, str]]) -> None:
        """Add a chunk's ``RecordBatch.malformed`` list, in order."""
        for line, reason in rows:
            self.add(reason, line)

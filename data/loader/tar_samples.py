"""Tar shards -> raw samples (a dict of member bytes per key), with damaged shards counted.

Members are grouped by key, the file name up to its first dot (webdataset's rule,
:func:`data.tar_member.split_member_name`), within one shard only: a key that ends one shard and
starts the next gives two samples, never a merged one, and a key that repeats inside a shard starts
a new sample when a member suffix repeats. A shard that cannot be opened, or that ends mid-member,
is counted and the stream moves on; the samples read before the cut are kept. Opening goes through
webdataset's ``gopen``, so ``pipe:`` commands and http(s) URLs work as well as local files.
"""
from __future__ import annotations

import tarfile
from typing import Any, Callable, Iterable, Iterator

from webdataset.gopen import gopen

from data.loader.skips import SkipCounter
from data.tar_member import split_member_name

Sample = dict[str, Any]


def tar_samples(urls: Iterable[str], skips: SkipCounter,
                on_shard: Callable[[], None] | None = None) -> Iterator[Sample]:
    """Samples ``{"__key__", "__url__", <suffix>: bytes ...}`` of every shard in ``urls``;
    ``on_shard`` is called as each shard is opened."""
    for url in urls:
        if on_shard is not None:
            on_shard()
        try:
            stream = gopen(url, "rb")
        except Exception as err:  # noqa: BLE001 - any failure to open is the same skip
            skips.add("unreadable_shard", url, f"{type(err).__name__}: {err}")
            continue
        damage = yield from _shard_samples(stream, url)
        try:
            stream.close()  # a pipe: source reports its command's failure here
        except Exception as err:  # noqa: BLE001 - a failed command explains any damage seen
            skips.add("unreadable_shard", url, f"{type(err).__name__}: {err}")
            continue
        if damage is not None:
            skips.add("truncated_tar", url, damage)


def _shard_samples(stream: Any, url: str) -> Iterator[Sample]:
    """Yields the shard's samples; returns what cut the shard short, or None."""
    current: Sample | None = None
    damage = None
    try:
        archive = tarfile.open(fileobj=stream, mode="r|*")
        for member in archive:
            if not member.isreg():
                continue
            named = split_member_name(member.name)
            if named is None or member.name.startswith("__"):
                continue
            key, suffix = named
            data = archive.extractfile(member).read()
            archive.members = []  # stream mode keeps every header otherwise
            if current is None or key != current["__key__"] or suffix in current:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            current[suffix] = data
    except (tarfile.TarError, OSError, EOFError) as err:
        damage = f"{type(err).__name__}: {err}"
    if current is not None:
        yield current
    return damage

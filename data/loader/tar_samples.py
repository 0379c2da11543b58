"""Tar shards -> raw samples (a dict of member bytes per key), with damaged shards counted.

Members are grouped by key, the file name up to its first dot (webdataset's rule,
:func:`data.tar_member.split_member_name`), within one shard only: a key that ends one shard and
starts the next gives two samples, never a merged one, and a key that repeats inside a shard starts
a new sample when a member suffix repeats. A shard that cannot be opened, or that ends mid-member,
is counted and the stream moves on; the samples read before the cut are kept. A member larger than
its cap (:data:`~data.images.decode.MAX_IMAGE_BYTES`, or
:data:`~data.untrusted_json.MAX_JSON_BYTES` for ``.json``) is never read: tarfile's stream skips
its data block by block, and its sample is counted as ``too_large``. Opening goes through
webdataset's ``gopen``, so ``pipe:`` commands and http(s) URLs work as well as local files.
"""
from __future__ import annotations

import tarfile
from typing import Any, Callable, Iterable, Iterator

from webdataset.gopen import gopen

from data.images.decode import MAX_IMAGE_BYTES
from data.loader.skips import SkipCounter
from data.tar_member import split_member_name
from data.untrusted_json import MAX_JSON_BYTES

Sample = dict[str, Any]


def tar_samples(urls: Iterable[str], skips: SkipCounter, on_shard: Callable[[], None] | None = None,
                mismatch: Callable[[str], str | None] | None = None) -> Iterator[Sample]:
    """Samples ``{"__key__", "__url__", <suffix>: bytes ...}`` of every shard in ``urls``;
    ``on_shard`` is called as each shard is opened. A shard for which ``mismatch`` (e.g.
    :meth:`~data.loader.shard_digests.ShardDigests.mismatch`) gives a reason is skipped, counted
    as ``corrupt_shard``."""
    for url in urls:
        if on_shard is not None:
            on_shard()
        problem = mismatch(url) if mismatch is not None else None
        if problem is not None:
            skips.add("corrupt_shard", url, problem)
            continue
        try:
            stream = gopen(url, "rb")
        except Exception as err:  # noqa: BLE001 - any failure to open is the same skip
            skips.add("unreadable_shard", url, f"{type(err).__name__}: {err}")
            continue
        damage = yield from _shard_samples(stream, url, skips)
        try:
            stream.close()  # a pipe: source reports its command's failure here
        except Exception as err:  # noqa: BLE001 - a failed command explains any damage seen
            skips.add("unreadable_shard", url, f"{type(err).__name__}: {err}")
            continue
        if damage is not None:
            skips.add("truncated_tar", url, damage)


def _shard_samples(stream: Any, url: str, skips: SkipCounter) -> Iterator[Sample]:
    """Yields the shard's samples (a sample with a member over its cap is counted instead); returns
    what cut the shard short, or None."""
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
            cap = MAX_JSON_BYTES if suffix == "json" else MAX_IMAGE_BYTES
            # An oversized member is left unread: the next header read skips its data block by block.
            data = None if member.size > cap else archive.extractfile(member).read()
            archive.members = []  # stream mode keeps every header otherwise
            if current is None or key != current["__key__"] or suffix in current:
                if current is not None:
                    yield from _complete(current, skips)
                current = {"__key__": key, "__url__": url}
            current[suffix] = b"" if data is None else data
            if data is None:
                current[_TOO_LARGE] = f"{member.name}: {member.size} bytes, over the {cap} a member may have"
    except (tarfile.TarError, OSError, EOFError) as err:
        damage = f"{type(err).__name__}: {err}"
    if current is not None:
        yield from _complete(current, skips)
    return damage


_TOO_LARGE = "__too_large__"


def _complete(sample: Sample, skips: SkipCounter) -> Iterator[Sample]:
    if _TOO_LARGE in sample:
        skips.add("too_large", f"{sample['__key__']} in {sample['__url__']}", sample[_TOO_LARGE])
    else:
        yield sample

"""Parsing JSON that someone else wrote: sample metadata in tars, JSONL rows, info.json.

``json.loads`` has no depth limit of its own: a document nested a few thousand levels deep raises
``RecursionError`` (not a ``ValueError``, so a reader's ``except ValueError`` lets it through and
the run dies), and pyarrow's JSON reader crashes the process outright (a segmentation fault at
100,000 levels). Every reader of untrusted JSON goes through this module instead:

- :func:`parse_json` parses one document and raises :class:`InvalidJSON`, with a short ``reason``
  (:data:`INVALID` or :data:`TOO_DEEP`) that readers count, for anything unusable: bad syntax,
  bytes that are not UTF-8, an integer too long to convert, nesting deeper than :data:`MAX_DEPTH`.
  The depth limit is ours, not the interpreter's, so a document is refused the same way whatever
  the depth of the call stack that parses it.
- :func:`may_nest_too_deep` tells, in one pass at C speed, whether any line of a JSONL block could
  nest deeper than :data:`MAX_DEPTH` (it counts opening brackets, strings included: an upper
  bound); only such a block needs the line-by-line path, where :func:`parse_json` decides.

Real metadata nests a few levels (img2dataset's EXIF is a string); 64 is far above any of it and
far below the interpreter's recursion limit.
"""
from __future__ import annotations

import json
import re
from typing import Any

#: the deepest nesting of arrays and objects accepted
MAX_DEPTH = 64
#: the largest JSON document read whole (an img2dataset sample's JSON, a shard sample's JSON);
#: bigger members are skipped unread
MAX_JSON_BYTES = 1 << 20
#: the counted reasons
INVALID = "invalid JSON"
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"

_NOT_OPENER_OR_NEWLINE = bytes(b for b in range(256) if b not in b"[{\n")
_MANY_OPENERS = re.compile(rb"[\[{]{%d}" % (MAX_DEPTH + 1))


class InvalidJSON(ValueError):
    """A document that cannot be used; ``reason`` is :data:`INVALID` or :data:`TOO_DEEP`,
    ``detail`` says what the parser saw."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def parse_json(data: bytes | str) -> Any:
    """The value of the JSON document ``data``; :class:`InvalidJSON` when it is not usable."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise InvalidJSON(TOO_DEEP, "the parser ran out of stack") from None
    except UnicodeDecodeError as err:
        raise InvalidJSON(INVALID, f"not UTF-8 ({err.reason} at byte {err.start})") from None
    except ValueError as err:  # JSONDecodeError, and int() of a number with too many digits
        raise InvalidJSON(INVALID, str(err)) from None
    if _openers(data) > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise InvalidJSON(TOO_DEEP)
    return value


def may_nest_too_deep(block: bytes) -> bool:
    """Whether a line of ``block`` holds more than :data:`MAX_DEPTH` opening brackets (so it may
    nest deeper than that); False proves every line nests at most that deep."""
    return _MANY_OPENERS.search(block.translate(None, _NOT_OPENER_OR_NEWLINE)) is not None


def _openers(data: bytes | str) -> int:
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    return data.count(b"[") + data.count(b"{")


def _depth(value: Any) -> int:
    """The nesting depth of a parsed value (a scalar is 0, ``[]`` is 1), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest

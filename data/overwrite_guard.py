"""A command never writes over its own inputs.

``build_vocab --input photos.jsonl --out photos.jsonl`` would replace the user's metadata with a
vocabulary, and so would an input named like a file the command writes beside ``--out`` (its
report, its plot). Every command that writes calls :func:`refuse_overwriting_inputs` once, right
after parsing its arguments, with every input path it reads and every path it writes, extra files
included. Paths are compared resolved (``..``, symbolic links, the working directory), and an input
given as a glob or brace pattern is compared by the files it matches. An output file is written
by renaming a temp file onto its name, so a symbolic link there is replaced, not followed: what
counts is the directory entry it replaces, which must be neither an input nor the file an input
links to. Refused, one line names both
flags and the path, and nothing has been written:

- an output file that is an input;
- an output directory (one the command fills and prunes, such as the shard builder's ``--out``)
  that is an input or holds one.

An output *inside* an input directory is allowed (a vocab.json written into the img2dataset folder
it was counted from): the readers take only their own file names from a directory.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Mapping, Union

import braceexpand

from data.errors import UserError

PathLike = Union[str, os.PathLike]
_PATTERN_CHARS = set("*?[{")


def refuse_overwriting_inputs(inputs: Mapping[str, PathLike | None], outputs: Mapping[str, PathLike] = {},
                              output_dirs: Mapping[str, PathLike] = {}) -> None:
    """Raise one :class:`UserError` line when an output would replace or prune an input.

    ``inputs``, ``outputs`` and ``output_dirs`` map how the user named each path (``"--input"``,
    ``"the report of --out"``) to the path; inputs that are None (not given) are ignored."""
    given = [(name, path) for name, path in inputs.items() if path is not None and str(path)]
    resolved = [(name, str(path), found) for name, path in given for found in _input_paths(path)]
    for out_name, out in outputs.items():
        target = _entry(out)
        for in_name, text, found in resolved:
            if found == target:
                raise UserError(f"{out_name} {out} is {in_name} {text}: writing it would destroy that input; "
                                f"pass another {_flag(out_name)}")
    for out_name, out in output_dirs.items():
        directory = _resolved(out)
        for in_name, text, found in resolved:
            if found == directory or directory in found.parents:
                raise UserError(f"{out_name} {out} holds {in_name} {text}: the command writes and removes files "
                                f"in {out_name}; keep inputs outside it, or pass another {_flag(out_name)}")


def _flag(name: str) -> str:
    """The flag inside a description such as 'the report of --out'."""
    return next((word for word in name.split() if word.startswith("-")), name)


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _entry(path: PathLike) -> Path:
    """The directory entry ``path`` names: its directory resolved, its last component kept."""
    path = Path(path).expanduser()
    return _resolved(path.parent) / path.name


def _input_paths(path: PathLike) -> Iterable[Path]:
    """The entry and the resolved file of an input, or of each file its glob / brace pattern matches."""
    text = str(path)
    if Path(text).exists() or not _PATTERN_CHARS & set(text):
        matches = [text]
    else:
        matches = [p for pattern in braceexpand.braceexpand(text) for p in glob.glob(pattern)]
    return sorted({found for match in matches for found in (_entry(match), _resolved(match))})

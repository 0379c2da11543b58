"""User-facing errors: one clear line naming the file, key or value and what to do.

Library code raises :class:`UserError` for anything a user can fix (a missing file, an unknown
column, an empty corpus). Command-line entry points wrap ``main`` with :func:`cli_main`, which
prints ``error: <message>`` on one line and exits with status 2 instead of a traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input or settings; the message says what to do about it."""


def cli_main(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a script's ``main`` so user errors end the process with one line, not a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper

"""User-facing errors: one clear line naming the file, key or value and what to do.

Library code raises :class:`UserError` for anything a user can fix (a missing file, an unknown
column, an empty corpus). Command-line entry points wrap ``main`` with :func:`cli_main`, which
prints ``error: <message>`` on one line and exits with status 2 instead of a traceback.

A UserError raised inside a DataLoader worker reaches the main process re-created by torch from a
text ("Caught UserError in DataLoader worker process 0. Original Traceback ...", the worker's whole
traceback); :class:`UserError` recovers the original one-line message from it, so it prints as the
same line it would have been in the main process.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input or settings; the message says what to do about it."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(_original_message(type(self), message), *args)


def _original_message(cls: type, message: object) -> object:
    """The message a worker raised, when torch's ExceptionWrapper.reraise re-creates the error from
    the worker's formatted traceback (whose last line is ``<module>.<class>: <message>``)."""
    if not (isinstance(message, str) and message.startswith(f"Caught {cls.__name__} ")
            and "\nOriginal Traceback" in message):
        return message
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    at = message.rfind(marker)
    return message[at + len(marker):].rstrip("\n") if at >= 0 else message


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

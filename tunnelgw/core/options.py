"""
The one reader of ``key=value`` words in the configuration file.

Route options (``ProxyPass /vnc tcp:... connecttimeout=5``), global settings
(``Limit sessions=100``) and topology options (``TokenSource ... allow=...``)
are all read by :func:`read_options` against a table of value readers, so
that they split, lower-case keys, refuse unknown and repeated keys and word
their errors the same way.  A reader takes the value text and returns the
value or raises :class:`ValueError` with what is wrong (the key is put in
front of the message).  Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Collection, Mapping

__all__ = ["Reader", "choice", "matching", "number", "read_options", "whole"]

Reader = Callable[[str], Any]


def read_options(words: list[str], readers: Mapping[str, Reader], problem: Callable[[str], None],
                 what: str, repeatable: Collection[str] = ()) -> dict[str, Any]:
    """
    Read ``key=value`` words.

    :param readers: key (lower case) -> reader of its value.
    :param what: names the place in messages, e.g. ``"ProxyPass"``.
    :param repeatable: keys that may be given more than once; their values
        come back as a list in the order written.
    :returns: key -> value for every word read without a problem.
    """
    found: dict[str, Any] = {}
    for word in words:
        key, eq, value = word.partition("=")
        key = key.lower()
        if not eq or key not in readers:
            wrong = f"expected key=value, got {word!r}" if not eq else f"unknown option {key!r}"
            problem(f"{what}: {wrong} (known: {', '.join(k + '=' for k in readers)})")
            continue
        if key in found and key not in repeatable:
            problem(f"{what}: {key}= given twice")
            continue
        try:
            read = readers[key](value)
        except ValueError as e:
            problem(f"{key} {e}")
            continue
        if key in repeatable:
            found.setdefault(key, []).append(read)
        else:
            found[key] = read
    return found


def number(low: float, high: float, above_low: bool = False) -> Reader:
    """A reader of a (finite) number from low to high (more than low when above_low)."""

    def read(value: str) -> float:
        try:
            found = float(value)
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
        if not math.isfinite(found) or not (low < found if above_low else low <= found) or found > high:
            raise ValueError(f"must be {'more than' if above_low else 'from'} {low:g} "
                             f"{'and at most' if above_low else 'to'} {high:g}, got {value!r}")
        return found

    return read


def whole(low: int, high: int) -> Reader:
    """A reader of a whole number from low to high, written in ASCII digits."""

    def read(value: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", value):
            raise ValueError(f"must be a whole number, got {value!r}")
        found = int(value)
        if not low <= found <= high:
            raise ValueError(f"must be from {low:g} to {high:g}, got {value!r}")
        return found

    return read


def choice(*words: str) -> Reader:
    """A reader of one of words (any letter case), returned lower-cased."""

    def read(value: str) -> str:
        if value.lower() not in words:
            raise ValueError(f"takes one of {', '.join(words)}, got {value!r}")
        return value.lower()

    return read


def matching(pattern: str, meaning: str) -> Reader:
    """A reader of text that matches a regular expression in full; meaning says what it is."""
    compiled = re.compile(pattern)

    def read(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"must be {meaning}, got {value!r}")
        return value

    return read

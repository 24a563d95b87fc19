"""
Where a configuration is wrong: locations, problems and the one error type
that carries them (``FILE:LINE: what is wrong``), shared by every parser in
:mod:`tunnelgw.core`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "Location", "Problem"]


@dataclass(frozen=True)
class Location:
    """Where a directive was written: a file name and a 1-based line number."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, at a :class:`Location`."""

    where: Location
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ConfigError(Exception):
    """
    A configuration was refused; ``problems`` lists every reason found.

    ``str()`` gives one ``FILE:LINE: what is wrong`` line per problem, in line
    order (a stable sort: problems of one line keep the order they were found
    in), whichever check found them.
    """

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: p.where.line))
        super().__init__("\n".join(str(p) for p in self.problems))

"""One problem of an inventory: where (file and key), what is wrong, and how to fix it."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Problem:
    """One thing to fix: where (file and key), what is wrong, and how to fix it."""

    file: str
    key: str
    message: str
    fix: str
    rule: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message} — fix: {self.fix}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def natural_key(text: str) -> tuple[tuple[int, str], ...]:
    """Sort key that puts nodes[9] before nodes[10]."""
    return tuple(
        (int(part), "") if part.isdigit() else (0, part) for part in re.split(r"(\d+)", text)
    )


def problem_order(problem: Problem) -> tuple[Any, ...]:
    """Problems by file, then key (numbers in keys in numeric order), then message."""
    return (problem.file, natural_key(problem.key), problem.message)

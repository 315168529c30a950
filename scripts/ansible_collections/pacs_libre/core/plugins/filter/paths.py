"""Filters for every pacs-libre role: ``{{ path | pacs_libre.core.ancestors }}``.

Part of the collection pacs_libre.core (docs/architecture.md, "Shared Python").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any


def ancestors(path: str) -> list[str]:
    """The folders above ``path``, from the top, without ``/``: /srv/pacs/orthanc ->
    [/srv, /srv/pacs]. A role creates the missing ones without taking the existing ones."""
    pure = PurePosixPath(str(path))
    if not pure.is_absolute():
        raise ValueError(f"ancestors: {path!r} is not an absolute path")
    return [str(p) for p in reversed(pure.parents) if str(p) != "/"]


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"ancestors": ancestors}

"""Filters of the postgresql role.

``postgresql_pgtune`` wraps ``postgresql_settings`` of the collection ``pacs_libre.core``
(``plugins/module_utils/pgtune.py``), the one place where pgtune's formulas live: ``pacsctl size``
prints the same numbers for a planned server as this role writes for a real one.
``postgresql_conf_value`` writes a value as postgresql.conf reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.pacs_libre.core.plugins.module_utils.pgtune import (
    SizingError,
    postgresql_settings,
)

_MIB = 2**20


def postgresql_pgtune(
    memory_mb: Any,
    cpus: Any,
    *,
    disk: str = "ssd",
    max_connections: Any = 100,
    workload: str = "oltp",
    pg_version: Any = 17,
) -> dict[str, str]:
    """pgtune's settings for ``memory_mb`` MiB of RAM and ``cpus`` CPUs (setting -> value)."""
    try:
        return postgresql_settings(
            ram_bytes=int(memory_mb) * _MIB,
            cpus=int(cpus),
            disk=str(disk),
            max_connections=int(max_connections),
            workload=str(workload),
            pg_version=int(pg_version),
        )
    except (SizingError, ValueError, TypeError) as exc:
        raise AnsibleFilterError(
            f"postgresql_pgtune: cannot tune for {memory_mb} MiB, {cpus} CPUs, disk '{disk}', "
            f"workload '{workload}': {exc}"
        ) from exc


def postgresql_conf_value(value: Any) -> str:
    """A postgresql.conf value: on/off, a number, or a quoted string ('' doubles a quote)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = ",".join(str(item) for item in value)
    elif isinstance(value, Mapping):
        raise AnsibleFilterError(f"postgresql.conf takes no mapping as a value: {value!r}")
    text = str(value)
    if "\n" in text:
        raise AnsibleFilterError(f"postgresql.conf takes no newline in a value: {text!r}")
    return "'" + text.replace("'", "''") + "'"


class FilterModule:
    """The postgresql role's filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "postgresql_pgtune": postgresql_pgtune,
            "postgresql_conf_value": postgresql_conf_value,
        }

"""Type checks: a value against its argument spec, as Ansible's validation would see it."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from typing import Any

from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.registry import Spec


class Vaulted:
    """A value encrypted with Ansible Vault: present, never decrypted here."""

    def __repr__(self) -> str:
        return "<vaulted>"


VAULTED = Vaulted()


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool | int | float):
        kind = "a boolean" if isinstance(value, bool) else "a number"
        return f"{kind} ({json.dumps(value)})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "a list"
    return "a mapping" if isinstance(value, dict) else type(value).__name__


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


_BOOL_STRINGS = {"yes", "no", "true", "false", "on", "off", "1", "0", "y", "n", "t", "f"}
_TYPE_FIX = {
    "str": 'quote the text, e.g. KEY: "text"',
    "path": "write an absolute path, e.g. KEY: /srv/pacs",
    "int": "write a whole number without quotes, e.g. KEY: 4242",
    "float": "write a number, e.g. KEY: 0.8",
    "bool": "write true or false, without quotes",
    "list": "write a YAML list: KEY: [a, b], or one '- item' per line under KEY",
    "dict": "write a mapping: one 'name: value' per line under KEY",
}
_TYPE_NAME = {
    "str": "a string",
    "path": "a path",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
}


def _is_number(value: Any, parse: Callable[[str], Any]) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return parse is float or isinstance(value, int)
    try:
        parse(str(value).strip())
    except ValueError:
        return False
    return isinstance(value, str)


_TYPE_OK: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str | int | float) and not isinstance(v, bool),
    "path": lambda v: isinstance(v, str | int | float) and not isinstance(v, bool),
    "int": lambda v: _is_number(v, int),
    "float": lambda v: _is_number(v, float),
    "bool": lambda v: (
        isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in _BOOL_STRINGS)
    ),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


def _type_ok(value: Any, kind: str) -> bool:
    """Whether Ansible's argument validation accepts ``value`` for ``kind`` without surprise.

    Scalars follow Ansible's conversions (a quoted number is a number); lists and mappings must
    be written as such (Ansible would split a string on commas, which surprises people).
    """
    return _TYPE_OK.get(kind, lambda _v: True)(value)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return found[0] if found else None


def check_value(value: Any, spec: Spec, key: str) -> list[tuple[str, str, str]]:
    """(key, message, fix) for each way ``value`` breaks ``spec`` (an argument_specs option)."""
    if isinstance(value, Vaulted) or is_template(value):
        return []
    kind = str(spec.get("type", "str"))
    if value is None:
        if spec.get("nullable"):
            return []
        keep = f" (default: {json.dumps(spec['default'])})" if "default" in spec else ""
        return [
            (key, "has no value", f"give it a value, or delete the line to keep the default{keep}")
        ]
    if not _type_ok(value, kind):
        return [
            (
                key,
                f"expected {_TYPE_NAME.get(kind, kind)}, got {kind_of(value)}",
                _TYPE_FIX.get(kind, f"give it a value of type {kind}").replace("KEY", key),
            )
        ]
    if kind == "list":
        return _check_list(value, spec, key)
    problems: list[tuple[str, str, str]] = []
    choices = spec.get("choices")
    if choices and str(value) not in [str(c) for c in choices]:
        names = ", ".join(str(c) for c in choices)
        problems.append((key, f"{value!r} is not one of {names}", f"use one of: {names}"))
    options = spec.get("options")
    if kind == "dict" and isinstance(options, dict):
        problems += _check_fields(value, options, key)
    return problems


def _check_list(value: list[Any], spec: Spec, key: str) -> list[tuple[str, str, str]]:
    item_spec: Spec = {"type": str(spec.get("elements", "raw"))}
    for name in ("choices", "options"):
        if name in spec:
            item_spec[name] = spec[name]
    problems: list[tuple[str, str, str]] = []
    for index, item in enumerate(value):
        problems += check_value(item, item_spec, f"{key}[{index}]")
    return problems


def _check_fields(
    value: dict[str, Any], options: dict[str, Spec], key: str
) -> list[tuple[str, str, str]]:
    problems: list[tuple[str, str, str]] = []
    for sub, sub_value in value.items():
        if sub not in options:
            near = closest(str(sub), options)
            hint = f"rename it to {near}" if near else f"use only: {', '.join(options)}"
            problems.append((f"{key}.{sub}", "unknown field", hint))
            continue
        problems += check_value(sub_value, options[sub] or {}, f"{key}.{sub}")
    for sub, sub_spec in options.items():
        if (sub_spec or {}).get("required") and sub not in value:
            problems.append((f"{key}.{sub}", "is missing", f"add {sub} to this entry"))
    return problems

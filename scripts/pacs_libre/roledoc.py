"""Role READMEs: the variable table is generated from meta/argument_specs.yml.

A role's inputs are declared once, in its argument specs; Ansible validates
them on entry, and this module writes the README's table from the same file.
The table sits between two markers, so the prose around it is hand-written:

    <!-- BEGIN GENERATED: argument_specs -->
    ...
    <!-- END GENERATED: argument_specs -->
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pacs_libre.errors import UserError

BEGIN = "<!-- BEGIN GENERATED: argument_specs -->"
END = "<!-- END GENERATED: argument_specs -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _default(option: dict[str, Any]) -> str:
    if option.get("required"):
        return "*required*"
    if "default" not in option:
        return ""
    return f"`{json.dumps(option['default'], ensure_ascii=False)}`"


def _type(option: dict[str, Any]) -> str:
    kind = str(option.get("type", "str"))
    if kind == "list" and "elements" in option:
        kind = f"list of {option['elements']}"
    if "choices" in option:
        kind += " (" + ", ".join(str(c) for c in option["choices"]) + ")"
    return kind


def _description(option: dict[str, Any]) -> str:
    desc = option.get("description", "")
    if isinstance(desc, list):
        desc = " ".join(str(d) for d in desc)
    return _cell(str(desc))


def render_table(specs_file: Path) -> str:
    """The Markdown for every entry point of a role's argument specs."""
    try:
        data = yaml.safe_load(specs_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{specs_file}: cannot read argument specs: {exc}") from exc
    entry_points = data.get("argument_specs")
    if not isinstance(entry_points, dict) or not entry_points:
        raise UserError(
            f"{specs_file}: no 'argument_specs' mapping: declare the role's inputs there"
        )
    parts: list[str] = []
    for entry, spec in entry_points.items():
        title = "Variables" if entry == "main" else f"Entry point `{entry}`"
        parts.append(f"### {title}\n")
        if spec.get("short_description"):
            parts.append(f"{_cell(str(spec['short_description']))}.\n")
        parts.append("| variable | type | default | description |")
        parts.append("| --- | --- | --- | --- |")
        for name, option in (spec.get("options") or {}).items():
            default = _cell(_default(option))
            parts.append(f"| `{name}` | {_type(option)} | {default} | {_description(option)} |")
            for sub, sub_option in (option.get("options") or {}).items():
                parts.append(
                    f"| `{name}[].{sub}` | {_type(sub_option)} | {_cell(_default(sub_option))} "
                    f"| {_description(sub_option)} |"
                )
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def update_readme(role_dir: Path, *, check: bool = False) -> bool:
    """Rewrite the generated part of a role's README. True if it was (or would be) changed."""
    readme = role_dir / "README.md"
    specs = role_dir / "meta" / "argument_specs.yml"
    if not readme.exists():
        raise UserError(f"{readme} is missing: write its prose with the markers {BEGIN} / {END}")
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise UserError(f"{readme}: add the markers {BEGIN} and {END} where the table goes")
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render_table(specs)}{END}{tail}"
    if new == text:
        return False
    if not check:
        readme.write_text(new, encoding="utf-8")
    return True


def roles_with_specs(root: Path) -> list[Path]:
    return sorted(p.parent.parent for p in root.glob("roles/*/meta/argument_specs.yml"))

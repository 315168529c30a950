"""Running every rule on an inventory, and the report of what to fix."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.problem import (
    Problem,
    problem_order,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.registry import Known
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.rules import (
    rule_dicom,
    rule_ports,
    rule_secrets,
    rule_storage,
    rule_variables,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.site_rules import (
    rule_relays,
    rule_site_links,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.sources import InventoryView


@dataclass
class Report:
    """Every problem of an inventory, and what could not be checked."""

    inventory: str
    hosts: list[str]
    problems: list[Problem]
    notices: list[str]
    example: bool

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            return f"{self.inventory}: {len(self.problems)} problem(s) to fix"
        example = " (an example: its CHANGEME secrets must be replaced before deploying)"
        return (
            f"{self.inventory}: OK, {len(self.hosts)} host(s) checked"
            f"{example if self.example else ''}"
        )


def check_view(view: InventoryView, known: Known) -> Report:
    """Run every rule on a view; all problems together, sorted by file and key."""
    storage, notices = rule_storage(view)
    links, link_notices = rule_site_links(view)
    problems = [
        *view.sources.problems,
        *rule_variables(view, known),
        *rule_dicom(view),
        *rule_ports(view, known),
        *rule_secrets(view, known),
        *storage,
        *links,
        *rule_relays(view),
    ]
    return Report(
        inventory=view.shown,
        hosts=sorted(view.hosts),
        problems=sorted(set(problems), key=problem_order),
        notices=[*notices, *link_notices],
        example=view.is_example,
    )

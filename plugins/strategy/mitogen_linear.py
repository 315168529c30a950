"""Ansible's linear strategy, run through Mitogen (the ``mitogen`` package, requirements.txt).

Mitogen keeps one Python interpreter per host for the whole run and sends each
module into it, instead of starting Python on the host for every task. On the lab
it runs a ``changed=0`` rerun of site.yml about twice as fast as plain SSH with
pipelining (docs/performance.md). Connections stay SSH, with the same keys,
pinned host keys and ssh config.

To run without it: ``ANSIBLE_STRATEGY=linear ansible-playbook ...``.
"""

from __future__ import annotations

import ansible_mitogen.loaders
import ansible_mitogen.strategy

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):  # type: ignore[misc,valid-type]
    """Linear, over Mitogen's connections."""

"""Inventory checks: the one source of truth for the rules an inventory must follow.

The modules, each with one job: ``registry`` (every variable an inventory may set),
``sources`` (reading the files, merging them per host), ``typecheck`` (a value against its
argument spec), ``rules`` and ``site_rules`` (one function per rule), ``report`` (running them
all). Standard
library and PyYAML only (which Ansible itself needs): they run in whichever Python runs
Ansible, for the preflight role, and in pacsctl (``pacs_libre.inventory`` reads an inventory
on disk with ``ansible-inventory``).

``pacsctl inventory check INVENTORY`` runs them on the files, and the ``preflight`` role runs
the very same functions on the variables Ansible holds in memory (with the hosts' facts) as the
first play of every playbook, before any host is changed.

An inventory is read in two ways:

* its structure (which host is in which group) comes from ``ansible-inventory --graph``, which
  accepts every inventory Ansible accepts and never needs the vault password;
* its variables come from walking its YAML files (``hosts.yml``, ``group_vars/``,
  ``host_vars/``), so that every problem names the file that defines the key. Values encrypted
  with Ansible Vault (``!vault`` strings or whole encrypted files) are never decrypted: they
  count as present secrets.

The rules, each reported with the file, the key and the fix, all together:

* ``unknown-variable``, ``removed-variable``, ``wrong-type``: every variable must be declared
  by a role's ``meta/argument_specs.yml``, by the pacs-wide list below (``PACS_VARIABLES``), by
  the lab (``LAB_VARIABLES``) or by ``pacsctl size --write-group-vars``; ``ansible_*`` and the
  prefixes listed in ``pacs_inventory_foreign_prefixes`` are left alone;
* ``placeholder``: ``CHANGEME`` only stands for a secret;
* ``ae-title``, ``duplicate-ae-title``: DICOM AE titles (PS3.5) and their uniqueness;
* ``duplicate-port``: two ``*_port`` variables of one host, or two published lab ports;
* ``storage``: the sized archive storage must fit the filesystem that holds the archive
  (needs the hosts' facts);
* ``site-link`` (``site_rules``): the WireGuard links of ``site_links`` (roles/site_link): valid
  and distinct names, IPv4 tunnels of prefix /30 or shorter that overlap neither each other nor
  ``pacs_reading_networks`` / ``base_admin_networks``, distinct ports per main host, a main end in
  ``pacs_archive`` and a peripheral end in ``pacs_relay``, and keys present beside the inventory
  (only noted in an example or the lab, until deployed; skipped when ``site_link_keys_dir`` is a
  template other than ``{{ inventory_dir }}``);
* ``relay-main-archive`` (``site_rules``): each relay's ``relay_main_archive`` is a host of
  ``pacs_archive``, or, unset, ``pacs_archive`` has exactly one host;
* ``missing-secret``: the secrets each group of hosts needs are defined, not empty, and not
  the ``CHANGEME`` placeholder (allowed only in an inventory that says
  ``pacs_inventory_is_example: true``, and never when deploying).

docs/inventories.md describes the rules for the people who write inventories.
"""

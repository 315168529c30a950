"""Errors that pacsctl reports to a person as one line, with exit status 2.

The class lives with the Python that the roles share (pacs_libre.core's module_utils), so that
an error raised by the inventory rules is the same error here and in the preflight role.
"""

from ansible_collections.pacs_libre.core.plugins.module_utils.errors import UserError

__all__ = ["UserError"]

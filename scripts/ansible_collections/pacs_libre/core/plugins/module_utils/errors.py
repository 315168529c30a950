"""The one error type that pacs-libre reports to a person as one line.

Raised by the shared code (the inventory rules, pgtune) and by pacsctl; pacsctl prints the
message with no traceback and exits 2, and the roles' plugins turn it into a task failure.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable environment: print the message, no traceback.

    The message names what is wrong (file, key, value) and how to fix it.
    """

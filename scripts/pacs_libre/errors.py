"""Errors that pacsctl reports to a person as one line, with exit status 2."""


class UserError(Exception):
    """Bad input or an unusable environment: print the message, no traceback, exit 2.

    The message names what is wrong (file, key, value) and how to fix it.
    """

"""Errors the CLI reports as one line (no traceback) with a non-zero exit."""


class UserError(Exception):
    """Bad input or environment: the message is shown to the user as is."""

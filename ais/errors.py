"""The base of every error that is the user's to fix (data, configuration), not a bug."""


class UserError(ValueError):
    """A problem with the user's data or configuration: its message says what and what to do.

    Rule jobs log it as its message alone (no traceback) and exit with 1.
    """

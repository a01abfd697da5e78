"""The one error type the CLI turns into a one-line message and exit code 2."""


class UserError(ValueError):
    """Bad input from the user: unknown names, malformed files, sizes that cannot work."""

"""The error types the CLI turns into a one-line message and exit code 2 (the ground floor: every package may
import this module, and it imports nothing of the project)."""


class UserError(ValueError):
    """Bad input from the user: unknown names, malformed files, sizes that cannot work."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded: missing or corrupt files, missing or mis-shaped tensors.

    A :class:`UserError` (hence a ``ValueError``), so the CLI reports it as a one-line message.
    """

"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class UserError(Exception):
    """Something the user can fix: the message names the problem and the fix."""

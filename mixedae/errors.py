"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UserError(ValueError):
    """A bad input the user can fix (wrong path, unknown key, unreadable checkpoint, ...).

    The message must say what is wrong and how to fix it, in one line.
    """

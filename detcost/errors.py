"""The one exception type that means "the user asked for something invalid"."""


class UsageError(Exception):
    """Bad input from the user: the CLI prints it on one line and exits with code 2."""

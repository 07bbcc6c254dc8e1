"""The error type for bad user input: the CLI prints its message and exits with status 2."""


class InputError(ValueError):
    """Bad input from a user: a file, a record, an argument. The message names where and what."""

"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong name, malformed YAML, a missing dataset.

    The message is a single line saying what is wrong and how to fix it.
    """

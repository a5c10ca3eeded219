"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong name, malformed YAML, a missing dataset.

    The message is a single line saying what is wrong and how to fix it.
    """


def note(message: str) -> None:
    """One line on stderr about something the user should know but that stops nothing (a
    damaged cache entry being rebuilt, records made with another thread count)."""
    import sys

    from tqdm import tqdm

    tqdm.write(f"dfmlbench: note: {message}", file=sys.stderr)  # keeps progress bars intact

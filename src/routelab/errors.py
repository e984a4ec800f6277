"""One exception type for bad input, so the CLI and stages can print a clean message."""


class RoutelabError(Exception):
    """Bad input or an unsupported situation; the message names the input and what to do."""

"""Command-line entry points (absl flags); each module's ``run`` is a console script."""

import sys
from typing import NoReturn, Sequence


def fail(message: str) -> NoReturn:
    """Ends a command with one ``error:`` line on stderr and exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def reject_extra_arguments(argv: Sequence[str]) -> None:
    """Fails on positional arguments, which no hagg_tf command takes (flags only)."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")

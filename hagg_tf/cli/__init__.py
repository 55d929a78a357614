"""Command-line entry points (absl flags); each module's ``run`` is a console script."""

"""Command-line faces: each ``cocoon`` subcommand's arguments and what it runs."""

__all__: list[str] = []

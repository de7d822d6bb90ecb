"""Subcommands of the `blockskip` command: each module has `register(subparsers)`."""

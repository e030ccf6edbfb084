"""copd: the command line (the roof over every part: CLI, the embedded stack, compare, watch)."""

from contract import __version__  # noqa: F401

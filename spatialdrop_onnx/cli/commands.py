"""Imports every sub-command module so each registers itself on the CLI group."""
from . import (
    bench_command,  # noqa: F401
    convert_command,  # noqa: F401
    graph_commands,  # noqa: F401
)

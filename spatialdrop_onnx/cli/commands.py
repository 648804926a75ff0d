"""Imports every sub-command module so each registers itself on the CLI group."""
from . import convert_command  # noqa: F401

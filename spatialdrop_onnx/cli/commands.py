"""Imports every sub-command module so each registers itself on the CLI group."""

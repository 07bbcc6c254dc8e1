"""Thin CLI subcommands: parse, build a config, call a library function."""

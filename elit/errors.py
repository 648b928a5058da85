"""Exceptions that carry a message meant for the user (the CLI prints them in one line)."""


class ElitError(Exception):
    """An error the user can fix: bad input, bad config, missing plugin."""


class ConfigError(ElitError):
    """A configuration is invalid."""


class PluginError(ElitError):
    """A plugin is missing, conflicting or broken."""


class InputError(ElitError):
    """An input file or array cannot be used."""


class StoreError(ElitError):
    """A result file cannot be read or written as asked."""

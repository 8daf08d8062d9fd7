"""The one error that every layer raises for input a user can fix.

A ConfigError's str() is the single line the CLI prints before exiting 2, before anything is
created: a config value, a feature file, a run directory that is not usable, and what is allowed.
It lives at the bottom so the data, model and config layers raise the same error.
"""


class ConfigError(ValueError):
    """A value that is not allowed; str() is the one line shown to the user."""

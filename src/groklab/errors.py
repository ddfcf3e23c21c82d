"""The errors every layer raises for bad input; the CLI turns both into exit code 2."""


class ConfigError(ValueError):
    """A config key, type or value is invalid. The CLI turns it into exit code 2."""

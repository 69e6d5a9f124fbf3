"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class BitnasError(Exception):
    """A problem with the user's input (file, option, data); never a bug in bitnas."""


class DataError(BitnasError):
    """A dataset is missing, malformed or inconsistent."""


class ConfigError(BitnasError):
    """An unknown option, a bad value, or an unknown registry name."""

"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class BitnasError(Exception):
    """A problem with the user's input (file, option, data); never a bug in bitnas."""


class DataError(BitnasError):
    """A dataset is missing, malformed or inconsistent."""


class ConfigError(BitnasError):
    """An unknown option, a bad value, or an unknown registry name."""


def brief(value: object, limit: int = 60) -> str:
    """A user's value for an error message: its repr, at most `limit` characters, built without
    walking all of a huge value (a message must stay one short line)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"

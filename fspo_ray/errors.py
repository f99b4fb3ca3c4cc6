"""The base of every error meant for a user: entrypoints print its message, never a traceback."""


class FspoError(ValueError):
    """Something the user can fix (config, paths, data); the message says what and what is allowed."""

"""The one exception type users see: a message that says what is wrong and how to fix it.

The CLI prints ``str(err)`` on one line and exits non-zero; library code raises these
instead of letting a deep traceback explain a bad input.
"""


class DcrError(Exception):
    """A user-facing error: bad config, missing file, incompatible model."""


class ConfigError(DcrError):
    """A config key, type or dimension that cannot work; raised before any model is built."""


class WriteError(DcrError):
    """A destination that cannot take the output (full, over quota, read-only, forbidden); once it
    can, running the same command again resumes or redoes the write."""

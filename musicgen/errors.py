"""The one exception type users see.

Cog shows an exception from predict() as ``<ExceptionClass>: <message>``, so every mistake a user can make is
raised as :class:`MusicGenError` whose message is the whole user-facing sentence.
"""


class MusicGenError(Exception):
    """A request that cannot be served, with one sentence saying what was wrong and how to fix it."""


class WeightsNotFoundError(MusicGenError):
    """The checkpoint is not on disk and could not be downloaded."""

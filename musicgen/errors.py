"""The one exception type users see.

Cog's server shows an exception from the (async) predict() as ``Prediction failed: Async prediction failed:
<ExceptionClass>: <message>`` (docs/api.md, "Errors"), so every mistake a user can make is raised as
:class:`MusicGenError` whose message is the whole user-facing sentence: its class name tells a client that the
request, not the server, was at fault.
"""


class MusicGenError(Exception):
    """A request that cannot be served, with one sentence saying what was wrong and how to fix it."""


class WeightsNotFoundError(MusicGenError):
    """The checkpoint is not on disk and could not be downloaded."""

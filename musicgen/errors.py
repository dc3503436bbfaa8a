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


def reason(exc: BaseException) -> str:
    """An exception as one line for a log: ``Type: first line of its message``. A compiler's wrapper whose own
    first line says nothing (torch.compile's "backend='…' raised:") gives the error it wraps."""
    inner = getattr(exc, "inner_exception", None)
    if isinstance(inner, BaseException) and inner is not exc:
        return reason(inner)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__

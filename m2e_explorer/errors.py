"""What a client sees when something goes wrong: one line, no server paths.

An :class:`~m2e_core.errors.M2EError` (bad input, missing weights, a refused label ...) becomes a
``gr.Error`` with its message on one line, absolute paths shortened to their last component.
Anything else is a bug or a server fault: it is logged here with the traceback and an id, and
the client sees only ``internal error (id 3f2a9c1e)``, which the operator finds in the log.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import gradio as gr

from m2e_core.errors import (
    AudioDecodeError,
    AudioTooLargeError,
    AudioTooShortError,
    ConfigError,
    LabelError,
    M2EError,
    SilentAudioError,
    WeightsNotFoundError,
)

log = logging.getLogger("m2e.explorer")

#: Longest message shown to a client (characters).
MAX_MESSAGE_CHARS = 400
_TITLES = (
    (AudioTooLargeError, "Too long or too large"),
    (AudioTooShortError, "Too short"),
    (SilentAudioError, "Silent audio"),
    (AudioDecodeError, "Cannot read the audio"),
    (WeightsNotFoundError, "Model weights missing"),
    (LabelError, "Label not saved"),
    (ConfigError, "Cannot do that"),
)
# An absolute path: a slash-led run of at least two components (``/tmp/x/y.wav``).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s/'\"(),;:]+){2,}/?")


def _last_component(match: re.Match[str]) -> str:
    parts = [part for part in match.group(0).split("/") if part]
    return parts[-1] if parts else ""


def one_line(message: str) -> str:
    """``message`` on one line, absolute paths cut to their last component, at most 400 characters.

    Examples
    --------
    >>> one_line("cannot open /tmp/m2e-app-x1/req-9/song.wav:\\n  no such file")
    'cannot open song.wav: no such file'
    """
    text = " ".join(str(message).split())
    text = _ABSOLUTE_PATH.sub(_last_component, text)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


def title_for(error: M2EError) -> str:
    """A short heading for the error's kind."""
    for kind, title in _TITLES:
        if isinstance(error, kind):
            return title
    return "Error"


def client_error(error: BaseException, where: str) -> gr.Error:
    """The ``gr.Error`` a client gets for ``error``; unexpected errors are logged with an id."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, M2EError):
        return gr.Error(one_line(str(error)) or type(error).__name__, title=title_for(error), print_exception=False)
    reference = uuid.uuid4().hex[:8]
    log.error("internal error (id %s) in %s", reference, where, exc_info=(type(error), error, error.__traceback__))
    return gr.Error(f"internal error (id {reference}): the server logged it", title="Internal error",
                    print_exception=False)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Gradio handler (a function or a generator function) with :func:`client_error`."""
    where = getattr(fn, "__qualname__", repr(fn))
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:  # every failure reaches the client as one line
                raise client_error(error, where) from error

        return generator

    @functools.wraps(fn)
    def function(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # every failure reaches the client as one line
            raise client_error(error, where) from error

    return function

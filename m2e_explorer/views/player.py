"""The track player: one ``<audio>`` element in track time, shared by the whole page.

Its HTML carries what the page's script needs as data attributes: the duration, and the span
to play (a segment, or the whole track). Selecting a segment moves the player to it and plays
it to its end; clicking a time on the timeline or the emotion chart plays from there.
"""

from __future__ import annotations

import html
from urllib.parse import quote

#: Where Gradio serves a file it accepted or wrote (relative to the page).
FILE_ROUTE = "gradio_api/file="


def player_html(audio_path: str | None, *, duration: float, start: float | None = None,
                end: float | None = None, request: int = 0) -> str:
    """The player for ``audio_path`` (``None``: a note that there is no audio to play).

    Parameters
    ----------
    audio_path : str or None
        A file Gradio serves (an upload).
    duration : float
        The track's length in seconds.
    start, end : float, optional
        The span to play when the user asks for one (a segment); ``None`` plays the track.
    request : int
        Increases with every request to move the player, so that choosing the same segment
        twice moves it twice.
    """
    if not audio_path:
        return ("<div class='m2e-player m2e-player-empty' data-duration='0'>No audio to play: open the "
                "analysis together with its audio file.</div>")
    source = html.escape(FILE_ROUTE + quote(str(audio_path), safe="/"), quote=True)
    span = ""
    if start is not None and end is not None:
        span = f" data-start='{float(start):.3f}' data-end='{float(end):.3f}'"
    return (f"<div class='m2e-player' data-duration='{float(duration):.3f}' data-request='{int(request)}'{span}>"
            f"<audio controls preload='auto' src='{source}'></audio>"
            "<span class='m2e-now' aria-live='off'></span></div>")

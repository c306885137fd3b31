"""Serving the explorer: a typed JSON API and MCP tool, ZeroGPU, and the weights a Space fetches at start.

API and MCP
-----------
:func:`register` adds the endpoint ``/analyze_track`` (``gr.api``): one audio file in, the JSON
``m2e analyze --json`` writes for it out (:meth:`m2e_core.types.Analysis.to_dict`). Its schema
comes from the type hints and the docstring of :func:`analyze_track_endpoint`'s function, so the
same endpoint is the MCP tool ``analyze_track`` when the app runs as an MCP server:
``GRADIO_MCP_SERVER=1`` (or ``launch(mcp_server=True)``; :func:`launch_kwargs` reads the
variable, and needs ``gradio[mcp]``). The MCP server speaks streamable HTTP at
``/gradio_api/mcp/``; an MCP client passes the audio as an ``http(s)://`` URL or a
``data:audio/...;base64,`` string, which Gradio saves as an upload before the tool runs; the tool's
result is the same dict, as text. The endpoint reads only uploads: a plain path string is refused.

ZeroGPU
-------
:func:`gpu` wraps a function in ``spaces.GPU(duration=...)`` on a Hugging Face Space (``SPACE_ID``
set) where the ``spaces`` package imports; anywhere else it returns the function unchanged.
The duration is asked per call from the track's length (:func:`gpu_seconds`).

Weights at start
----------------
``preload_from_hub`` in the README's front matter preloads the MERT model repository at build
time. The Music2Emo heads and BTC live in a Space repository, which ``preload_from_hub`` cannot
fetch; :func:`fetch_weights_in_background` starts their download
(:func:`m2e_core.weights.download_all`) in a thread when the app starts on a Space (or when
``M2E_FETCH_WEIGHTS=1``), and logs what it fetched or why it could not.
"""

# No ``from __future__ import annotations`` here: Gradio reads the endpoint's type hints as objects
# to build its API and MCP schema, and a postponed (string) hint becomes an empty schema.


import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import soundfile as sf
from gradio.context import get_blocks_context

from m2e_core.errors import ConfigError, M2EError

log = logging.getLogger("m2e.explorer.hosting")

__all__ = [
    "API_NAME",
    "analysis_json",
    "analyze_track_endpoint",
    "fetch_weights_in_background",
    "gpu",
    "gpu_seconds",
    "launch_kwargs",
    "on_space",
    "register",
]

#: The endpoint's name: ``/analyze_track`` for gradio_client, ``analyze_track`` as an MCP tool.
API_NAME = "analyze_track"
#: The concurrency group of every analysis (the UI's analyses share it, so one limit covers both).
CONCURRENCY_ID = "analysis"
#: Environment variable that switches the MCP server on (Gradio's own name).
MCP_ENV = "GRADIO_MCP_SERVER"
#: Environment variable that asks for the background weight download outside a Space.
FETCH_ENV = "M2E_FETCH_WEIGHTS"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# GPU time asked per call (seconds). A ZeroGPU call holds the GPU for the whole analysis: decoding
# and chords run on the CPU inside it, the encoder and heads on the GPU.
# - GPU_BASE_SECONDS: moving the models onto the GPU and CUDA's first kernels (a few seconds for a
#   95M-parameter encoder), with room for a busy CPU.
# - GPU_SECONDS_PER_AUDIO_SECOND: the chord stage dominates; on a 2-core CPU it took 43 s for a
#   3-minute track (0.24 s per second of audio) and the encoder's 30-second segments take well
#   under a second each on a GPU, so 0.5 s per second of audio is about twice what is needed.
# - GPU_MAX_SECONDS: a 15-minute track (the app's default limit) asks 20 + 450 = 470 s; the cap
#   keeps one request from asking more than a ten-minute share of the Space's GPU quota.
GPU_BASE_SECONDS = 20.0
GPU_SECONDS_PER_AUDIO_SECOND = 0.5
GPU_MAX_SECONDS = 600.0
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s/'\"(),;:]+){2,}/?")


def _flag(environ: Mapping[str, str], name: str) -> bool | None:
    """``True``/``False`` for a set boolean variable, ``None`` when unset; anything else is refused."""
    value = environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false), got {environ[name]!r}")


def on_space(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the app runs on a Hugging Face Space (the platform sets ``SPACE_ID``)."""
    env = os.environ if environ is None else environ
    return bool(env.get("SPACE_ID", "").strip())


# -- the analysis as JSON ----------------------------------------------------------------------


def analysis_json(analysis: Any, *, emotion_missing: str | None = None) -> dict[str, Any]:
    """The CLI's JSON for one analysis, with ``segments`` and ``track`` always present.

    Without an emotion prediction both are ``null`` (the command line leaves them out), so a
    client reading ``result["track"]`` gets ``None`` instead of a ``KeyError``, and a warning says
    why there is no emotion (``emotion_missing``, e.g. the weights that are not on the server).
    """
    data = analysis.to_dict()
    data.setdefault("segments", None)
    data.setdefault("track", None)
    if data["track"] is None:
        reason = "no valence/arousal or mood/theme tags: the emotion model is not loaded on this server"
        if emotion_missing:
            reason += f" ({_strip_paths(emotion_missing)})"
        data["warnings"] = [*data.get("warnings", []), reason]
    return data


def _strip_paths(message: str) -> str:
    """``message`` with absolute server paths cut to their last component, on one line."""
    def last(match: re.Match[str]) -> str:
        parts = [part for part in match.group(0).split("/") if part]
        return parts[-1] if parts else ""

    return " ".join(_ABSOLUTE_PATH.sub(last, message).split())


def _uploaded_path(audio: Any) -> str:
    """The server path of an upload as Gradio passes it to a ``gr.api`` function (a FileData dict).

    A plain string is refused: Gradio checks that a FileData's path is a file some client uploaded,
    but passes any other value through unchecked, so a string could name any file on the server.
    """
    if isinstance(audio, gr.FileData):
        audio = audio.model_dump()
    if not isinstance(audio, Mapping) or (audio.get("meta") or {}).get("_type") != "gradio.FileData" \
            or not isinstance(audio.get("path"), str):
        raise gr.Error("audio must be an uploaded file: use gradio_client.handle_file(path) or, from an MCP "
                       "client, an http(s) URL or a data: URL of the audio", title="Cannot do that",
                       print_exception=False)
    return audio["path"]


def analyze_track_endpoint(get_analyzer: Callable[[], Any],
                           emotion_missing: Callable[[], str | None] | None = None) -> Callable[..., dict]:
    """The ``analyze_track`` function that :func:`register` exposes, over a shared analyzer.

    ``get_analyzer()`` returns the app's :class:`~m2e_core.pipeline.Analyzer` (built on first use);
    ``emotion_missing()`` says why it has no emotion model, when it has none.
    """
    run = gpu(lambda path: get_analyzer().analyze(path), duration=gpu_seconds)

    # Gradio reads the schema from the hints and the "Args:"/"Returns:" sections of this
    # docstring (its parser knows that layout, not numpydoc's).
    def analyze_track(audio: gr.FileData) -> dict:
        """Analyse one music track: key, chords and (when the emotion model is loaded) valence, arousal and mood/theme tags.

        Valence and arousal are on a 1-9 scale (negative to positive, calm to energetic), per
        30-second segment and for the whole track; tags are probabilities of 56 MTG-Jamendo
        mood/theme tags, with the selected ones in track.selected_tags.

        Args:
            audio: The audio file to analyse (mp3, wav, flac or ogg, at most the server's track length limit).

        Returns:
            The analysis as the m2e command line writes it: source, duration, key {tonic, mode, confidence}, key_timeline, chords [{start, end, label}], normalized_chords, provenance, warnings, segments and track (null without the emotion model).
        """
        path = _uploaded_path(audio)
        try:
            get_analyzer()  # built here, once: a ZeroGPU worker then inherits it instead of loading it per call
            analysis = run(path)
        except M2EError as error:
            raise gr.Error(_strip_paths(str(error)), title=type(error).__name__, print_exception=False) from error
        return analysis_json(analysis, emotion_missing=emotion_missing() if emotion_missing else None)

    return analyze_track


def register(demo: gr.Blocks, get_analyzer: Callable[[], Any], *,
             emotion_missing: Callable[[], str | None] | None = None) -> Any:
    """Add the public ``/analyze_track`` endpoint (and MCP tool) to ``demo``.

    Call it inside ``with gr.Blocks() as demo:``; the endpoint joins the ``"analysis"``
    concurrency group with the default limit. Returns the ``gr.api`` dependency.
    """
    if get_blocks_context() is not demo.default_config:
        raise ConfigError("register() must be called inside `with demo:` of the Blocks it adds to")
    return gr.api(analyze_track_endpoint(get_analyzer, emotion_missing), api_name=API_NAME,
                  concurrency_id=CONCURRENCY_ID, concurrency_limit="default", api_visibility="public")


# -- launch ------------------------------------------------------------------------------------


def launch_kwargs(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``launch()`` arguments for hosting: ``mcp_server`` from ``GRADIO_MCP_SERVER``.

    Raises
    ------
    ConfigError
        The variable is not a boolean, or asks for MCP where ``gradio[mcp]`` is not installed.
    """
    env = os.environ if environ is None else environ
    mcp = _flag(env, MCP_ENV)
    if mcp:
        try:
            import mcp as _mcp  # noqa: F401
        except ImportError as error:
            raise ConfigError(f"{MCP_ENV}=1 needs the MCP server package: pip install 'gradio[mcp]'") from error
    return {"mcp_server": bool(mcp)}


# -- ZeroGPU -----------------------------------------------------------------------------------


def gpu_seconds(audio: Any, *args: Any, **kwargs: Any) -> int:
    """GPU seconds to ask ZeroGPU for analysing ``audio`` (a path): base + per second of audio, capped.

    Takes the decorated function's arguments, as ``spaces.GPU(duration=callable)`` passes them.
    A file whose length cannot be read from its header gets the cap.
    """
    try:
        seconds = float(sf.info(os.fspath(audio)).duration)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return int(GPU_MAX_SECONDS)
    if not math.isfinite(seconds) or seconds < 0:
        return int(GPU_MAX_SECONDS)
    return int(math.ceil(min(GPU_MAX_SECONDS, GPU_BASE_SECONDS + GPU_SECONDS_PER_AUDIO_SECOND * seconds)))


def gpu(fn: Callable[..., Any], *, duration: float | Callable[..., float] = GPU_BASE_SECONDS,
        environ: Mapping[str, str] | None = None) -> Callable[..., Any]:
    """``spaces.GPU(duration=duration)(fn)`` on a Space with the ``spaces`` package, else ``fn`` itself.

    ``duration`` is seconds, or a callable taking ``fn``'s arguments and returning seconds.
    """
    if not on_space(environ):
        return fn
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


# -- weights at start --------------------------------------------------------------------------


def _fetch(fetch: Callable[[], Mapping[str, Path]]) -> None:
    try:
        fetched = fetch()
    except M2EError as error:
        log.warning("weights not fetched at start (the first analysis will try again): %s", error)
        return
    except Exception:  # a thread's failure must reach the log, not vanish with the thread
        log.exception("weights not fetched at start: unexpected error")
        return
    log.info("weights ready: %s", ", ".join(f"{name} {path}" for name, path in fetched.items()))


def fetch_weights_in_background(environ: Mapping[str, str] | None = None, *,
                                fetch: Callable[[], Mapping[str, Path]] | None = None) -> threading.Thread | None:
    """Start fetching the default weights in a daemon thread on a Space (or when ``M2E_FETCH_WEIGHTS=1``).

    ``fetch`` defaults to :func:`m2e_core.weights.download_all` without progress bars (files in a
    cache are found there, so only what is missing is downloaded). Nothing starts on a local run,
    when ``M2E_FETCH_WEIGHTS=0``, or when the environment is offline (``M2E_OFFLINE``,
    ``HF_HUB_OFFLINE``). Returns the thread, or ``None`` when none was started. Errors are logged,
    never raised.
    """
    env = os.environ if environ is None else environ
    wanted = _flag(env, FETCH_ENV)
    if wanted is False or (wanted is None and not on_space(env)):
        return None
    if any((env.get(name) or "").strip().lower() in _TRUE for name in ("M2E_OFFLINE", "HF_HUB_OFFLINE")):
        log.info("offline: the weights are not fetched at start")
        return None
    if fetch is None:
        from m2e_core.weights import download_all

        def fetch() -> Mapping[str, Path]:
            return download_all(progress=False)

    thread = threading.Thread(target=_fetch, args=(fetch,), name="m2e-fetch-weights", daemon=True)
    thread.start()
    return thread

"""The one :class:`~m2e_core.pipeline.Analyzer` every session shares, and what to say about it.

Environment: ``M2E_ENCODER``, ``M2E_CHECKPOINT`` (MERT directory or Hub id, emotion heads;
default the cache), ``M2E_DEVICE`` (``cpu``/``cuda``), ``M2E_FAST`` (``1``: bf16 encoder),
``M2E_OFFLINE`` (``1``: never download weights).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from m2e_core.constants import MAX_FILE_BYTES
from m2e_core.errors import WeightsNotFoundError

from .errors import one_line
from .settings import Settings
from .views.text import ModelsState

AnalyzerFactory = Callable[..., Any]
_TRUE = ("1", "true", "yes", "on")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def default_analyzer_factory(*, emotion: bool = True) -> Any:
    """An Analyzer from the environment (see the module docstring)."""
    from m2e_core.pipeline import Analyzer

    settings = Settings.from_env()
    return Analyzer(
        encoder=os.environ.get("M2E_ENCODER") or None,
        checkpoint=os.environ.get("M2E_CHECKPOINT") or None,
        emotion=emotion,
        device=os.environ.get("M2E_DEVICE") or None,
        fast=_env_flag("M2E_FAST"),
        allow_download=not _env_flag("M2E_OFFLINE"),
        max_bytes=max(MAX_FILE_BYTES, settings.max_upload_bytes),
        max_duration=settings.max_seconds,
    )


class SharedAnalyzer:
    """One Analyzer for every session, built on first use under a lock.

    When the emotion weights are missing (:class:`WeightsNotFoundError`), it falls back to an
    analyzer with ``emotion=False`` (key and chords) and keeps the reason in ``missing``.
    """

    def __init__(self, factory: AnalyzerFactory) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._analyzer: Any = None
        self.missing: str | None = None

    @property
    def loaded(self) -> Any:
        """The analyzer if it has been built, else ``None`` (never builds it)."""
        return self._analyzer

    def get(self) -> Any:
        if self._analyzer is not None:
            return self._analyzer
        with self._lock:
            if self._analyzer is None:
                try:
                    analyzer = self._factory(emotion=True)
                except WeightsNotFoundError as error:
                    self.missing = str(error)
                    analyzer = self._factory(emotion=False)
                self._analyzer = analyzer
        return self._analyzer


def offline_variable() -> str:
    """The variable that switches downloads off (``M2E_OFFLINE`` or ``HF_HUB_OFFLINE``), else ``""``."""
    for name in ("M2E_OFFLINE", "HF_HUB_OFFLINE"):
        if _env_flag(name):
            return name
    return ""


def missing_models() -> tuple[str, ...]:
    """The emotion models (from the environment) that are not on this machine, by name."""
    from m2e_core.weights import ENCODER_REPO, resolve_encoder, resolve_heads

    missing = []
    encoder = os.environ.get("M2E_ENCODER") or None
    checkpoint = os.environ.get("M2E_CHECKPOINT") or None
    for name, resolve, value in (
        (f"the MERT encoder ({encoder or ENCODER_REPO})", resolve_encoder, encoder),
        ("the emotion heads" + (f" ({os.path.basename(checkpoint)})" if checkpoint else ""), resolve_heads,
         checkpoint),
    ):
        try:
            resolve(value, allow_download=False)
        except WeightsNotFoundError:
            missing.append(name)
    return tuple(missing)


def models_state(shared: SharedAnalyzer, *, check_weights: bool) -> ModelsState:
    """What to tell users about the emotion models now (see :func:`~m2e_explorer.views.text.models_md`)."""
    from m2e_core.weights import DOWNLOAD_COMMAND

    analyzer = shared.loaded
    offline = offline_variable()
    if analyzer is None:
        if not check_weights:
            return ModelsState("unknown", download_command=DOWNLOAD_COMMAND)
        missing = missing_models()
        if not missing:
            return ModelsState("on disk", download_command=DOWNLOAD_COMMAND)
        return ModelsState("missing offline" if offline else "missing", missing, offline_variable=offline,
                           download_command=DOWNLOAD_COMMAND)
    if analyzer.emotion_enabled:
        return ModelsState("loaded", download_command=DOWNLOAD_COMMAND)
    if shared.missing is not None and offline and check_weights:
        return ModelsState("missing offline", missing_models() or ("the emotion model",), offline_variable=offline,
                           download_command=DOWNLOAD_COMMAND)
    reason = one_line(shared.missing) if shared.missing else "the emotion model was switched off"
    return ModelsState("failed", reason=reason, download_command=DOWNLOAD_COMMAND)

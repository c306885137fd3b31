"""The explorer's state shared by every session: the models, the settings, the files, the labels.

:class:`ExplorerApp` is what the handlers get as ``ctx``; its methods are the explorer's
actions, callable without a browser (the tests call them directly). Views live in
:mod:`m2e_explorer.views`, handlers in :mod:`m2e_explorer.handlers`, the page in
:mod:`m2e_explorer.page`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from m2e_core.labels import Identity
from m2e_core.labelstore import LabelStore

from .files import TempFiles
from .handlers import analysis as analysis_handlers
from .handlers import batch as batch_handlers
from .handlers import labels as label_handlers
from .models import AnalyzerFactory, SharedAnalyzer, default_analyzer_factory, models_state
from .session import Loaded, Page, ViewOptions
from .settings import Settings
from .views.text import models_md

#: The view settings a call without any gets (blind labelling on).
DEFAULT_OPTIONS = ViewOptions()


class ExplorerApp:
    """The explorer's actions over one shared analyzer.

    Parameters
    ----------
    analyzer_factory : callable
        ``factory(emotion=bool) -> Analyzer``; called once, lazily.
    label_store : LabelStore, optional
        Where labels go (default: ``$M2E_LABELS_DB``, else SQLite in ``$M2E_LABELS_DIR``).
    temp_root : Path, optional
        Parent of the per-request temporary directories (default: a fresh ``tempfile``
        directory, removed at exit and on SIGTERM/SIGINT).
    settings : Settings, optional
        Limits (default :meth:`Settings.from_env`).
    check_weights : bool, optional
        Before the first analysis, say which weights are on disk (default: only for
        :func:`default_analyzer_factory`, whose weights come from the environment).
    """

    def __init__(self, analyzer_factory: AnalyzerFactory = default_analyzer_factory, *,
                 label_store: LabelStore | None = None, temp_root: str | Path | None = None,
                 settings: Settings | None = None, max_file_age_s: float = 3600.0,
                 check_weights: bool | None = None) -> None:
        self.shared = SharedAnalyzer(analyzer_factory)
        self.check_weights = analyzer_factory is default_analyzer_factory if check_weights is None else check_weights
        self.labels = label_store if label_store is not None else LabelStore()
        self.files = TempFiles(temp_root, max_age_s=max_file_age_s)
        self.settings = settings if settings is not None else Settings.from_env()

    @property
    def temp_root(self) -> Path:
        """The directory holding every request's files."""
        return self.files.root

    def request_dir(self) -> Path:
        """A new private directory for one request's files."""
        return self.files.request_dir()

    # -- models ----------------------------------------------------------------------------

    def models_md(self) -> str:
        """The models banner: what the emotion models can do now, said once."""
        return models_md(models_state(self.shared, check_weights=self.check_weights))

    def thresholds(self) -> dict[str, float] | None:
        """The checkpoint's per-tag thresholds, once the models are loaded (else ``None``)."""
        analyzer = self.shared.loaded
        if analyzer is None or not analyzer.emotion_enabled or analyzer.tag_thresholds is None:
            return None
        return dict(zip(analyzer.tag_names, analyzer.tag_thresholds))

    # -- the Analyze tab -------------------------------------------------------------------

    def iter_analyze(self, audio_path: str | None, options: ViewOptions = DEFAULT_OPTIONS,
                     progress: Any = None) -> Iterator[Page]:
        """Analyse a file, yielding the page as it grows (key and chords first, then each segment)."""
        return analysis_handlers.analyze(self, audio_path, options, progress)

    def analyze(self, audio_path: str | None, options: ViewOptions = DEFAULT_OPTIONS, progress: Any = None) -> Page:
        """Analyse a file; the complete page (the last of :meth:`iter_analyze`)."""
        *_, page = self.iter_analyze(audio_path, options, progress)
        return page

    def load_analysis(self, json_path: str | None, audio_path: str | None = None,
                      options: ViewOptions = DEFAULT_OPTIONS) -> Page:
        """Open an analysis JSON (from ``m2e analyze --json`` or this app), optionally with its audio."""
        return analysis_handlers.load_analysis(self, json_path, audio_path, options)

    def view(self, loaded: Loaded | None, selection: Any, options: ViewOptions = DEFAULT_OPTIONS, *,
             move_player: bool = True, reset_form: bool = True) -> Page:
        """The figures and text for a segment (or the whole track, :data:`~m2e_explorer.session.TRACK`)."""
        return analysis_handlers.view(self, loaded, selection, options, move_player=move_player,
                                      reset_form=reset_form)

    # -- labels ----------------------------------------------------------------------------

    def identify(self, *, hf_username: str | None = None, typed_name: str | None = None) -> Identity:
        """Who a request speaks for: the signed-in Hugging Face account, else the typed name."""
        return self.labels.identify(hf_username=hf_username, typed_name=typed_name)

    def save_label(self, loaded: Loaded | None, selection: Any, include_va: bool, valence: float, arousal: float,
                   tags: Sequence[str] | None, requester: Identity) -> str:
        """Save a label for the selection, owned by ``requester``; a line saying what was saved."""
        return label_handlers.save_label(self, loaded, selection, include_va, valence, arousal, tags, requester)

    def export_labels(self, fmt: str, scope: str, requester: Identity) -> str:
        """Export ``requester``'s labels (or everyone's, where the policy allows); the file's path."""
        return label_handlers.export_labels(self, fmt, scope, requester)

    def label_summary(self, requester: Identity | None) -> str:
        """What ``requester`` has labelled so far, in one line."""
        return label_handlers.label_summary(self, requester)

    # -- the Batch tab ---------------------------------------------------------------------

    def iter_batch(self, files: Sequence[str] | None, progress: Any = None) -> Iterator[batch_handlers.BatchResult]:
        """Analyse several files, yielding the table after each one."""
        return batch_handlers.batch(self, files, progress)

    def batch(self, files: Sequence[str] | None, progress: Any = None) -> batch_handlers.BatchResult:
        """Analyse several files; the final result (the last of :meth:`iter_batch`)."""
        *_, result = self.iter_batch(files, progress)
        return result

    def open_batch_row(self, result: batch_handlers.BatchResult | None, row: Any,
                       options: ViewOptions = DEFAULT_OPTIONS) -> Page:
        """Show one analysed file of a batch in the Analyze tab."""
        return batch_handlers.open_row(self, result, row, options)

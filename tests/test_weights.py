"""Weights resolution: explicit path -> M2E_HOME cache -> download; never touches the network."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import urllib.error
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import m2e_core.weights as weights
from m2e_core.errors import CheckpointError, ConfigError, WeightsNotFoundError
from m2e_core.model import MultitaskEmotionModel, load_heads, make_tiny_heads
from m2e_core.weights import (
    BTC_SOURCE,
    DOWNLOAD_COMMAND,
    ENCODER_REPO,
    HEADS_SOURCE,
    HubFile,
    describe_missing,
    download_all,
    fetch_url,
    hub_revision,
    m2e_home,
    resolve_btc,
    resolve_encoder,
    resolve_heads,
    split_url,
)

REVISION = "0123456789abcdef0123456789abcdef01234567"


def repo_folder(repo_type: str, repo_id: str) -> str:
    return f"{repo_type}s--" + repo_id.replace("/", "--")


def put_in_cache(home: Path, source: HubFile, content: bytes, revision: str = REVISION) -> Path:
    """Write ``content`` where huggingface_hub's cache keeps ``source`` (revision ``main``)."""
    repo = home / "hub" / repo_folder(source.repo_type, source.repo_id)
    target = repo / "snapshots" / revision / source.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return target


def remote_missing_error(message: str) -> Exception:
    """The error huggingface_hub raises for a file the repository does not hold (HTTP 404)."""
    from huggingface_hub import errors

    cls = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    try:
        import httpx2 as client
    except ImportError:
        import httpx as client
    response = client.Response(404, request=client.Request("HEAD", "https://huggingface.co/x"))
    return cls(message, response=response)


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "m2e-home"
    monkeypatch.setenv("M2E_HOME", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("M2E_OFFLINE", raising=False)
    return root


@pytest.fixture()
def no_hub(monkeypatch) -> None:
    """Any attempt to reach the Hub fails the test."""
    import huggingface_hub

    def forbidden(*args, **kwargs):
        raise AssertionError("the Hub must not be contacted here")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    monkeypatch.setattr(weights, "_check_reachable", forbidden)


class FakeHub:
    """Serves files from a dict the way ``hf_hub_download`` does, into the cache it is given."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.failure: Exception | None = None

    def add(self, source: HubFile, content: bytes) -> None:
        self.files[(source.repo_type, source.repo_id, source.filename)] = content

    def __call__(self, *, repo_id, filename, repo_type=None, cache_dir=None, **kwargs):
        repo_type = repo_type or "model"
        self.calls.append((repo_type, repo_id, filename))
        if self.failure is not None:
            raise self.failure
        key = (repo_type, repo_id, filename)
        if key not in self.files:
            raise remote_missing_error(f"404 Client Error: Entry Not Found for {filename}")
        repo = Path(cache_dir) / repo_folder(repo_type, repo_id)
        target = repo / "snapshots" / REVISION / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.files[key])
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(REVISION)
        return str(target)


@pytest.fixture()
def hub(home, monkeypatch) -> FakeHub:
    import huggingface_hub

    fake = FakeHub()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(weights, "_check_reachable", lambda url, timeout=5.0: None)
    return fake


def lightning_ckpt_bytes(tmp_path: Path, embedding_dim: int = 12) -> bytes:
    torch.manual_seed(0)
    model = MultitaskEmotionModel(embedding_dim)
    state = OrderedDict(("model." + name, tensor) for name, tensor in model.state_dict().items())
    path = tmp_path / "made.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path.read_bytes()


# -- locations -------------------------------------------------------------------------------


def test_m2e_home_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("M2E_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert m2e_home() == tmp_path / ".cache" / "m2e"
    monkeypatch.setenv("M2E_HOME", "~/elsewhere")
    assert m2e_home() == tmp_path / "elsewhere"


def test_hub_revision_of_cache_paths():
    snapshot = Path("/c/hub/models--m-a-p--MERT-v1-95M/snapshots") / REVISION
    assert hub_revision(snapshot) == REVISION
    assert hub_revision(snapshot / "config.json") == REVISION
    assert hub_revision("/models/mert/config.json") is None


# -- explicit paths --------------------------------------------------------------------------


def test_explicit_encoder_directory(home, no_hub, tmp_path):
    encoder = tmp_path / "my-mert"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    assert resolve_encoder(encoder) == encoder
    assert resolve_encoder(str(encoder)) == encoder
    (encoder / "config.json").unlink()
    with pytest.raises(WeightsNotFoundError, match="no config.json"):
        resolve_encoder(encoder)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_encoder(tmp_path / "absent" / "dir")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_encoder("./not/a/hub-id/either")


def test_explicit_heads_paths(home, no_hub, tmp_path):
    written = make_tiny_heads(tmp_path / "mine.safetensors", embedding_dim=12)
    assert resolve_heads(written) == written
    assert resolve_heads(written.with_suffix(".json")) == written
    assert resolve_heads(str(tmp_path / "mine")) == written
    written.with_suffix(".json").unlink()
    with pytest.raises(WeightsNotFoundError, match="mine.json"):
        resolve_heads(written)


def test_upstream_ckpt_path_is_imported_once_into_the_cache(home, no_hub, tmp_path):
    ckpt = tmp_path / "teacher.ckpt"
    ckpt.write_bytes(lightning_ckpt_bytes(tmp_path))
    imported = resolve_heads(ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert imported == home / "heads" / f"teacher-{digest[:12]}.safetensors"
    model, config = load_heads(imported)
    assert config.embedding_dim == 12 and config.provenance["sha256"] == digest
    stamp = imported.stat().st_mtime_ns
    assert resolve_heads(ckpt) == imported and imported.stat().st_mtime_ns == stamp
    with pytest.raises(WeightsNotFoundError, match="absent.ckpt"):
        resolve_heads(tmp_path / "absent.ckpt")


def test_explicit_btc_path(home, no_hub, tmp_path):
    btc = tmp_path / "btc.pt"
    btc.write_bytes(b"weights")
    assert resolve_btc(btc) == btc
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resolve_btc(tmp_path / "nope.pt")


# -- cache hits ------------------------------------------------------------------------------


def populate_cache(home: Path, tmp_path: Path) -> None:
    encoder = HubFile(ENCODER_REPO, "config.json", "model", "")
    put_in_cache(home, encoder, b"{}")
    put_in_cache(home, HubFile(ENCODER_REPO, "pytorch_model.bin", "model", ""), b"bin")
    make_tiny_heads(home / "heads" / "J_all.safetensors", embedding_dim=12)
    put_in_cache(home, BTC_SOURCE, b"btc")


def test_cache_hits_need_no_network(home, no_hub, tmp_path):
    assert len(describe_missing()) == 3
    populate_cache(home, tmp_path)
    snapshot = home / "hub" / "models--m-a-p--MERT-v1-95M" / "snapshots" / REVISION
    assert resolve_encoder() == snapshot
    assert resolve_encoder(ENCODER_REPO) == snapshot
    assert hub_revision(resolve_encoder()) == REVISION
    assert resolve_heads() == home / "heads" / "J_all.safetensors"
    assert resolve_btc() == snapshot.parents[2] / "spaces--amaai-lab--music2emo" / "snapshots" / REVISION / \
        "inference" / "data" / "btc_model_large_voca.pt"
    assert describe_missing() == []


def test_files_preloaded_into_the_machines_hub_cache_are_found(home, no_hub, tmp_path, monkeypatch):
    """A Space's preload_from_hub puts the files in the Hugging Face cache, not in M2E_HOME."""
    from huggingface_hub import constants

    shared = tmp_path / "hf-home"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(shared / "hub"))
    assert len(describe_missing()) == 3
    put_in_cache(shared, HubFile(ENCODER_REPO, "config.json", "model", ""), b"{}")
    put_in_cache(shared, HubFile(ENCODER_REPO, "model.safetensors", "model", ""), b"weights")
    put_in_cache(shared, BTC_SOURCE, b"btc")
    put_in_cache(shared, HEADS_SOURCE, lightning_ckpt_bytes(tmp_path))
    assert describe_missing() == []
    snapshot = shared / "hub" / "models--m-a-p--MERT-v1-95M" / "snapshots" / REVISION
    assert resolve_encoder() == snapshot
    assert resolve_btc().read_bytes() == b"btc"
    heads = resolve_heads()  # imported once from the preloaded .ckpt into M2E_HOME, nothing downloaded
    assert heads == home / "heads" / "J_all.safetensors" and heads.with_suffix(".json").is_file()
    assert describe_missing() == []
    assert not (home / "hub").exists()


def test_encoder_cache_without_weights_is_not_a_hit(home, no_hub):
    put_in_cache(home, HubFile(ENCODER_REPO, "config.json", "model", ""), b"{}")
    with pytest.raises(WeightsNotFoundError, match=DOWNLOAD_COMMAND):
        resolve_encoder()


# -- offline and absent ----------------------------------------------------------------------


@pytest.mark.parametrize("resolve", [resolve_encoder, resolve_heads, resolve_btc])
def test_offline_and_absent_names_the_download_command(home, no_hub, resolve):
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve()
    message = str(caught.value)
    assert DOWNLOAD_COMMAND in message and "HF_HUB_OFFLINE=1" in message and str(home) in message


@pytest.mark.parametrize("resolve", [resolve_encoder, resolve_heads, resolve_btc])
def test_allow_download_false_and_m2e_offline(home, no_hub, monkeypatch, resolve):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(WeightsNotFoundError, match=DOWNLOAD_COMMAND):
        resolve(allow_download=False)
    monkeypatch.setenv("M2E_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="M2E_OFFLINE=1"):
        resolve()


def test_describe_missing_lines(home, no_hub):
    lines = describe_missing()
    assert [line.split(" ")[0] for line in lines] == ["MERT", "Music2Emo", "BTC"]
    assert all(DOWNLOAD_COMMAND in line for line in lines)
    assert "CC-BY-NC-4.0" in lines[0]
    assert len(describe_missing(include_btc=False)) == 2


def test_download_all_offline_fails_at_once(home, no_hub):
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE=1 switches downloads off"):
        download_all(progress=False)


def test_unreachable_host_fails_fast(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WeightsNotFoundError, match="cannot reach 127.0.0.1"):
        weights._check_reachable(f"https://127.0.0.1:{port}", timeout=2.0)


# -- Hub downloads (hf_hub_download replaced by a local fake) --------------------------------


def test_encoder_download_falls_back_to_pytorch_model_bin(hub):
    for name, content in (("config.json", b"{}"), ("preprocessor_config.json", b"{}"), ("pytorch_model.bin", b"w")):
        hub.add(HubFile(ENCODER_REPO, name, "model", ""), content)
    directory = resolve_encoder()
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "preprocessor_config.json",
                                                           "pytorch_model.bin"]
    assert [call[2] for call in hub.calls] == ["config.json", "preprocessor_config.json", "model.safetensors",
                                               "pytorch_model.bin"]
    assert hub_revision(directory) == REVISION
    hub.calls.clear()
    assert resolve_encoder() == directory and hub.calls == []


def test_encoder_download_prefers_safetensors_and_needs_weights(hub):
    hub.add(HubFile(ENCODER_REPO, "config.json", "model", ""), b"{}")
    with pytest.raises(WeightsNotFoundError, match="not a MERT model"):
        resolve_encoder()
    hub.add(HubFile(ENCODER_REPO, "model.safetensors", "model", ""), b"w")
    hub.add(HubFile(ENCODER_REPO, "pytorch_model.bin", "model", ""), b"w")
    directory = resolve_encoder()
    assert (directory / "model.safetensors").is_file() and not (directory / "pytorch_model.bin").exists()


def test_heads_download_is_imported_to_our_format(hub, tmp_path, home):
    hub.add(HEADS_SOURCE, lightning_ckpt_bytes(tmp_path))
    path = resolve_heads()
    assert path == home / "heads" / "J_all.safetensors"
    model, config = load_heads(path)
    assert config.provenance["source"] == "hf://spaces/amaai-lab/music2emo/saved_models/J_all.ckpt"
    assert config.provenance["revision"] == REVISION
    assert hub.calls == [("space", "amaai-lab/music2emo", "saved_models/J_all.ckpt")]
    hub.calls.clear()
    assert resolve_heads() == path and hub.calls == []


def test_btc_download(hub):
    hub.add(BTC_SOURCE, b"btc weights")
    path = resolve_btc()
    assert path.read_bytes() == b"btc weights" and path.name == "btc_model_large_voca.pt"


def test_hub_errors_become_weights_not_found(hub):
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub.failure = LocalEntryNotFoundError("connection broken while locating the file")
    with pytest.raises(WeightsNotFoundError, match="connection broken") as caught:
        resolve_btc()
    assert DOWNLOAD_COMMAND in str(caught.value)
    hub.failure = OSError("disk full")
    with pytest.raises(WeightsNotFoundError, match="disk full"):
        resolve_encoder()


def test_download_all_fetches_everything_and_reports_every_failure(hub, tmp_path):
    hub.add(HubFile(ENCODER_REPO, "config.json", "model", ""), b"{}")
    hub.add(HubFile(ENCODER_REPO, "model.safetensors", "model", ""), b"w")
    hub.add(HEADS_SOURCE, lightning_ckpt_bytes(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="btc: .*does not exist on the Hub") as caught:
        download_all(progress=False)
    assert "encoder:" not in str(caught.value) and "heads:" not in str(caught.value)
    assert describe_missing(include_btc=False) == []
    hub.add(BTC_SOURCE, b"btc")
    fetched = download_all(progress=False)
    assert set(fetched) == {"encoder", "heads", "btc"} and all(p.exists() for p in fetched.values())
    assert set(download_all(include_btc=False, progress=False)) == {"encoder", "heads"}


# -- plain URLs ------------------------------------------------------------------------------


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_file_url_download_with_hash_check(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 << 20))
    target = tmp_path / "out" / "file.bin"
    assert fetch_url(source.as_uri(), target, sha256=sha(source.read_bytes()), progress=False) == target
    assert target.read_bytes() == source.read_bytes()


def test_hash_mismatch_leaves_nothing_behind(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"what the server sent")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_url(source.as_uri(), out / "file.bin", sha256=sha(b"what we expected"), progress=False)
    assert list(out.iterdir()) == []


class FakeResponse(io.BytesIO):
    def __init__(self, content: bytes, *, break_after: int | None = None) -> None:
        super().__init__(content)
        self.headers = {"Content-Length": str(len(content))}
        self.break_after = break_after

    def read(self, size: int = -1) -> bytes:
        if self.break_after is not None and self.tell() >= self.break_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, 1024) if size and size > 0 else 1024)


def test_https_download_through_the_opener(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("M2E_OFFLINE", raising=False)
    content = b"x" * 5000
    opened: list[str] = []

    def opener(url, timeout):
        opened.append(url)
        return FakeResponse(content)

    monkeypatch.setattr(weights, "_open_url", opener)
    target = fetch_url("https://example.org/w.pt", tmp_path / "w.pt", sha256=sha(content), progress=True)
    assert target.read_bytes() == content and opened == ["https://example.org/w.pt"]

    monkeypatch.setattr(weights, "_open_url", lambda url, timeout: FakeResponse(content, break_after=2048))
    with pytest.raises(WeightsNotFoundError, match="connection reset"):
        fetch_url("https://example.org/b.pt", tmp_path / "broken" / "b.pt", sha256=sha(content), progress=False)
    assert list((tmp_path / "broken").iterdir()) == []

    def unreachable(url, timeout):
        raise urllib.error.URLError("name resolution failed")

    monkeypatch.setattr(weights, "_open_url", unreachable)
    with pytest.raises(WeightsNotFoundError, match="name resolution failed"):
        fetch_url("https://example.org/c.pt", tmp_path / "c.pt", sha256=sha(content), progress=False)


def test_url_rules(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="only https"):
        fetch_url("http://example.org/w.pt", tmp_path / "w", sha256="0" * 64)
    with pytest.raises(ConfigError, match="64 hex"):
        fetch_url("https://example.org/w.pt", tmp_path / "w", sha256="abc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=DOWNLOAD_COMMAND):
        fetch_url("https://example.org/w.pt", tmp_path / "w", sha256="0" * 64)
    assert split_url("https://h/x.ckpt#sha256=" + "A" * 64) == ("https://h/x.ckpt", "a" * 64)
    assert split_url("https://h/x.ckpt") == ("https://h/x.ckpt", None)


def test_resolvers_take_urls_with_a_hash(home, no_hub, tmp_path):
    btc = tmp_path / "btc.pt"
    btc.write_bytes(b"btc weights")
    path = resolve_btc(f"{btc.as_uri()}#sha256={sha(btc.read_bytes())}")
    assert path.parent == home / "downloads" and path.read_bytes() == b"btc weights"
    with pytest.raises(ConfigError, match="sha256"):
        resolve_btc(btc.as_uri())

    ckpt = tmp_path / "student.ckpt"
    ckpt.write_bytes(lightning_ckpt_bytes(tmp_path))
    heads = resolve_heads(f"{ckpt.as_uri()}#sha256={sha(ckpt.read_bytes())}")
    _, config = load_heads(heads)
    assert config.provenance["source"] == ckpt.as_uri()
    with pytest.raises(WeightsNotFoundError, match=DOWNLOAD_COMMAND):
        resolve_heads("https://example.org/other.ckpt#sha256=" + "0" * 64)

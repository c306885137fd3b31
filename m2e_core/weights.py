"""Where model weights come from: one resolver for the encoder, the emotion heads and BTC.

Every model is found in the same order: an explicit path -> the ``M2E_HOME`` cache
(default ``~/.cache/m2e``) -> a download. Downloads from the Hugging Face Hub go through
``huggingface_hub`` into ``M2E_HOME/hub`` (its usual cache layout, with progress bars);
other URLs are streamed over HTTPS, checked against a sha256 and moved into place only
when complete. Nothing is downloaded when ``allow_download`` is false or the environment
says offline (``HF_HUB_OFFLINE=1`` or ``M2E_OFFLINE=1``): a missing model then raises
:class:`~m2e_core.errors.WeightsNotFoundError` naming what is missing and the command that
fetches everything, ``m2e download`` (or ``python -m m2e_core download``).

Sources
-------
- MERT-v1-95M: Hub model ``m-a-p/MERT-v1-95M`` (``config.json``, ``preprocessor_config.json``
  and ``model.safetensors`` or ``pytorch_model.bin``). Licence CC-BY-NC-4.0.
- Emotion heads: Hub Space ``amaai-lab/music2emo``, ``saved_models/J_all.ckpt`` (the student
  trained on all four datasets), imported once into our format as ``M2E_HOME/heads/J_all``.
- BTC chord model: the same Space, ``inference/data/btc_model_large_voca.pt``.

Cache layout
------------
``M2E_HOME/hub/``        Hugging Face cache (``models--m-a-p--MERT-v1-95M/``, ``spaces--...``)
``M2E_HOME/heads/``      emotion heads in our format (``.safetensors`` + ``.json``)
``M2E_HOME/downloads/``  files fetched from other URLs, named ``<sha256 prefix>-<file name>``
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .constants import M2E_HOME_ENV
from .errors import CheckpointError, ConfigError, M2EError, WeightsNotFoundError

#: The command that fetches every model into the cache.
DOWNLOAD_COMMAND = "m2e download"
#: How to analyse without the emotion weights (key and chords only).
NO_EMOTION_HINT = "key and chords alone need no download: m2e analyze --no-emotion (Analyzer(emotion=False))"
#: Cache directory when ``M2E_HOME`` is not set.
DEFAULT_HOME = Path("~") / ".cache" / "m2e"
#: Environment variables that switch downloads off (besides ``allow_download=False``).
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "M2E_OFFLINE")

#: The MERT encoder on the Hub, and the files a local encoder directory needs.
ENCODER_REPO = "m-a-p/MERT-v1-95M"
ENCODER_LICENSE = "CC-BY-NC-4.0"
ENCODER_CONFIG_FILE = "config.json"
ENCODER_OPTIONAL_FILES = ("preprocessor_config.json",)
ENCODER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class HubFile:
    """One file in a Hugging Face Hub repository."""

    repo_id: str
    filename: str
    repo_type: str
    description: str

    @property
    def address(self) -> str:
        """``hf://`` address for messages and provenance."""
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"hf://{kind}{self.repo_id}/{self.filename}"


#: Published Music2Emo student (all four datasets), imported to our format on download.
HEADS_SOURCE = HubFile("amaai-lab/music2emo", "saved_models/J_all.ckpt", "space",
                       "Music2Emo emotion heads (J_all)")
#: Cache name of the imported default heads (``M2E_HOME/heads/J_all.safetensors``).
HEADS_CACHE_STEM = "J_all"
#: BTC large-vocabulary chord recogniser.
BTC_SOURCE = HubFile("amaai-lab/music2emo", "inference/data/btc_model_large_voca.pt", "space",
                     "BTC chord model")

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = ("1", "true", "yes", "on")
_BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------
# Locations and modes
# --------------------------------------------------------------------------------------------


def m2e_home() -> Path:
    """The weights cache: ``$M2E_HOME`` or ``~/.cache/m2e`` (not created here)."""
    configured = os.environ.get(M2E_HOME_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_HOME.expanduser()


def hub_cache_dir() -> Path:
    """Hugging Face cache inside :func:`m2e_home`."""
    return m2e_home() / "hub"


def heads_cache_dir() -> Path:
    """Emotion heads in our format inside :func:`m2e_home`."""
    return m2e_home() / "heads"


def downloads_dir() -> Path:
    """Files fetched from plain URLs inside :func:`m2e_home`."""
    return m2e_home() / "downloads"


def offline() -> bool:
    """Whether the environment forbids network access (``HF_HUB_OFFLINE`` / ``M2E_OFFLINE``)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENVS)


def hub_revision(path: str | os.PathLike[str]) -> str | None:
    """The commit hash of a file or directory inside a Hub cache snapshot, else ``None``."""
    parts = Path(path).parts
    for index, part in enumerate(parts[:-1]):
        if part == "snapshots" and index > 0 and parts[index - 1].count("--") >= 2:
            return parts[index + 1]
    return None


def _missing(what: str, where: str, reason: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{what} is not available: {where}, and {reason}. Fetch the models once with: "
        f"{DOWNLOAD_COMMAND} (into {m2e_home()}; set {M2E_HOME_ENV} to choose another directory), "
        f"or pass a local path; {NO_EMOTION_HINT}"
    )


def _require_download(what: str, where: str, allow_download: bool) -> None:
    """Raise :class:`WeightsNotFoundError` when downloading is switched off."""
    if not allow_download:
        raise _missing(what, where, "downloading is switched off (offline)")
    active = [name for name in OFFLINE_ENVS if os.environ.get(name, "").strip().lower() in _TRUE]
    if active:
        raise _missing(what, where, f"downloading is switched off ({active[0]}={os.environ[active[0]]})")


# --------------------------------------------------------------------------------------------
# Hugging Face Hub
# --------------------------------------------------------------------------------------------


def _hub_errors() -> tuple[type[BaseException], type[BaseException], tuple[type[BaseException], ...]]:
    """(remote "no such file", local "not cached", network failures) of the installed huggingface_hub."""
    from huggingface_hub import errors

    remote_missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    failures: list[type[BaseException]] = [OSError, ValueError, errors.EntryNotFoundError]
    # The HTTP client's own error base (connection failures are not OSErrors there).
    http_error = getattr(errors, "HTTPError", None)
    if isinstance(http_error, type) and issubclass(http_error, BaseException):
        failures.append(http_error)
    return remote_missing, errors.LocalEntryNotFoundError, tuple(failures)


def shared_hub_cache_dir() -> Path:
    """The Hugging Face cache of this machine (``HF_HUB_CACHE``, ``HF_HOME/hub`` or ``~/.cache/huggingface/hub``).

    A Space's ``preload_from_hub`` puts its files there at build time.
    """
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def cached_hub_file(source: HubFile) -> Path | None:
    """The cached copy of ``source`` (revision ``main``), or ``None``.

    Looked up in ``M2E_HOME/hub`` first, then in the machine's Hugging Face cache
    (:func:`shared_hub_cache_dir`), where a Space's ``preload_from_hub`` puts it.
    """
    from huggingface_hub import try_to_load_from_cache

    for cache in dict.fromkeys((hub_cache_dir(), shared_hub_cache_dir())):
        found = try_to_load_from_cache(source.repo_id, source.filename, cache_dir=str(cache),
                                       repo_type=source.repo_type)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def _check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail fast when the Hub's host cannot be reached (huggingface_hub retries for ~30 s).

    Skipped behind a proxy, where only the proxy is reachable directly.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise WeightsNotFoundError(
            f"cannot reach {host} ({error}); the models can only be fetched with internet access: "
            f"run {DOWNLOAD_COMMAND} where the Hub is reachable, or set {M2E_HOME_ENV} to a cache that "
            f"holds them; {NO_EMOTION_HINT}"
        ) from error


def _hub_download(source: HubFile) -> Path | None:
    """Download ``source`` into ``M2E_HOME/hub``; ``None`` when the repository lacks the file."""
    import huggingface_hub

    cached = cached_hub_file(source)
    if cached is not None:
        return cached
    _check_reachable(_hub_endpoint())
    remote_missing, local_missing, failures = _hub_errors()
    try:
        found = huggingface_hub.hf_hub_download(
            repo_id=source.repo_id,
            filename=source.filename,
            repo_type=source.repo_type,
            cache_dir=str(hub_cache_dir()),
        )
    except remote_missing as error:
        if isinstance(error, local_missing):
            raise _download_failed(source, error) from error
        return None
    except failures as error:
        raise _download_failed(source, error) from error
    return Path(found)


def download_hub_file(source: HubFile) -> Path:
    """Download one Hub file into ``M2E_HOME/hub`` (or find it there) and return its path.

    Raises
    ------
    WeightsNotFoundError
        On any network or Hub error (the message carries the cause), or when the
        repository does not hold the file.
    """
    found = _hub_download(source)
    if found is None:
        raise WeightsNotFoundError(f"{source.address} does not exist on the Hub ({source.description})")
    return found


def _download_failed(source: HubFile, error: BaseException) -> WeightsNotFoundError:
    text = str(error).strip()
    cause = text.splitlines()[0].rstrip(".") if text else type(error).__name__
    return WeightsNotFoundError(
        f"could not download {source.description} from {source.address}: {cause}. Check the network "
        f"connection and run: {DOWNLOAD_COMMAND}"
    )


@contextlib.contextmanager
def _hub_progress(enabled: bool) -> Iterator[None]:
    """Show or hide huggingface_hub's progress bars for the duration of the block."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


# --------------------------------------------------------------------------------------------
# Plain URLs
# --------------------------------------------------------------------------------------------


def _open_url(url: str, timeout: float) -> Any:
    """Open ``url`` for streaming (a seam for tests)."""
    request = urllib.request.Request(url, headers={"User-Agent": "m2e"})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the scheme is checked by the caller


def split_url(url: str) -> tuple[str, str | None]:
    """``"https://host/file#sha256=<hex>"`` -> ``("https://host/file", "<hex>")``."""
    base, _, fragment = url.partition("#")
    match = re.fullmatch(r"sha256=([0-9A-Fa-f]{64})", fragment)
    return base, match.group(1).lower() if match else None


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` is a URL (``scheme://...``) rather than a path."""
    return isinstance(text, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def fetch_url(
    url: str,
    destination: str | os.PathLike[str],
    *,
    sha256: str,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Stream ``url`` to ``destination``, verifying its sha256; nothing is left on failure.

    Parameters
    ----------
    url : str
        An ``https://`` URL (or ``file://`` for a local mirror).
    destination : str or PathLike
        Final path; the download goes to a temporary file beside it and is renamed only
        once the hash matches.
    sha256 : str
        Expected hex digest of the content.
    progress : bool
        Show a progress bar on stderr.
    timeout : float
        Seconds to wait for the server.

    Returns
    -------
    Path
        ``destination``.

    Raises
    ------
    ConfigError
        If the scheme is not https/file or ``sha256`` is not a hex digest.
    WeightsNotFoundError
        If the environment is offline or the download fails.
    CheckpointError
        If the content's sha256 differs from ``sha256``.
    """
    from .files import atomic_path

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("https", "file"):
        raise ConfigError(f"refusing to download {url}: only https:// (or file://) URLs are allowed")
    expected = sha256.lower()
    if not _SHA256.fullmatch(expected):
        raise ConfigError(f"expected sha256 for {url} must be 64 hex digits, got {sha256!r}")
    if scheme == "https":
        _require_download(url, "it has not been downloaded", True)
    destination = Path(destination)
    digest = hashlib.sha256()
    with atomic_path(destination) as temporary:
        try:
            with contextlib.closing(_open_url(url, timeout)) as response, temporary.open("wb") as output:
                length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
                with _progress_bar(int(length) if length and length.isdigit() else None,
                                   destination.name, progress) as advance:
                    for block in iter(lambda: response.read(_BLOCK), b""):
                        output.write(block)
                        digest.update(block)
                        advance(len(block))
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            raise WeightsNotFoundError(
                f"could not download {url}: {error}. Check the network connection and run: {DOWNLOAD_COMMAND}"
            ) from error
        actual = digest.hexdigest()
        if actual != expected:
            raise CheckpointError(
                f"{url}: sha256 is {actual}, expected {expected}; the file was not kept (incomplete or altered)"
            )
    return destination


@contextlib.contextmanager
def _progress_bar(total: int | None, name: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda count: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:
        yield bar.update


def _fetch_cached_url(url: str, what: str, allow_download: bool) -> Path:
    """A ``URL#sha256=<hex>`` file in ``M2E_HOME/downloads``, fetched when missing."""
    base, expected = split_url(url)
    if expected is None:
        raise ConfigError(f"give the expected sha256 of {what} with the URL: {base}#sha256=<64 hex digits>")
    name = Path(urllib.parse.urlsplit(base).path).name or "download"
    destination = downloads_dir() / f"{expected[:16]}-{name}"
    if destination.is_file():
        return destination
    if urllib.parse.urlsplit(base).scheme.lower() != "file":
        _require_download(what, f"{base} has not been downloaded to {downloads_dir()}", allow_download)
    return fetch_url(base, destination, sha256=expected)


# --------------------------------------------------------------------------------------------
# Resolvers
# --------------------------------------------------------------------------------------------


def _cached_encoder(repo_id: str) -> Path | None:
    """Snapshot directory holding ``config.json`` and a weights file of ``repo_id``, if cached."""
    config = cached_hub_file(HubFile(repo_id, ENCODER_CONFIG_FILE, "model", ""))
    if config is None:
        return None
    if any((config.parent / name).is_file() for name in ENCODER_WEIGHT_FILES):
        return config.parent
    return None


def _download_encoder(repo_id: str) -> Path:
    description = f"MERT encoder {repo_id}"
    config = download_hub_file(HubFile(repo_id, ENCODER_CONFIG_FILE, "model", description))
    for name in ENCODER_OPTIONAL_FILES:
        _hub_download(HubFile(repo_id, name, "model", description))
    for name in ENCODER_WEIGHT_FILES:
        weights = _hub_download(HubFile(repo_id, name, "model", description))
        if weights is None:
            continue
        if weights.parent != config.parent:  # the repository changed between the two requests
            raise WeightsNotFoundError(f"{repo_id} changed while downloading; run {DOWNLOAD_COMMAND} again")
        return config.parent
    raise WeightsNotFoundError(f"{repo_id} holds none of {list(ENCODER_WEIGHT_FILES)}: it is not a MERT model")


def resolve_encoder(name_or_path: str | os.PathLike[str] | None = None, *, allow_download: bool = True) -> Path:
    """The local directory of a MERT encoder.

    Parameters
    ----------
    name_or_path : str or PathLike, optional
        A local directory (returned as is once ``config.json`` is found there) or a Hub
        model id; default ``m-a-p/MERT-v1-95M``.
    allow_download : bool
        Whether a Hub id missing from the cache may be downloaded.

    Returns
    -------
    Path
        A directory with ``config.json`` (and weights), e.g. a snapshot in ``M2E_HOME/hub``.

    Raises
    ------
    WeightsNotFoundError
        If the directory lacks ``config.json``, the path does not exist, or the model is
        neither cached nor downloadable.

    Examples
    --------
    >>> resolve_encoder("/models/mert")  # doctest: +SKIP
    PosixPath('/models/mert')
    """
    repo_id = ENCODER_REPO
    if name_or_path is not None:
        text = os.fspath(name_or_path)
        candidate = Path(text).expanduser()
        if candidate.exists():
            if not (candidate / ENCODER_CONFIG_FILE).is_file():
                raise WeightsNotFoundError(
                    f"{candidate} is not an encoder directory: it has no {ENCODER_CONFIG_FILE} "
                    "(expected config.json, preprocessor_config.json and model weights)"
                )
            return candidate
        if not isinstance(name_or_path, str) or not _HUB_ID.fullmatch(text):
            raise WeightsNotFoundError(f"encoder directory {candidate} does not exist")
        repo_id = text
    cached = _cached_encoder(repo_id)
    if cached is not None:
        return cached
    _require_download(f"MERT encoder {repo_id}", f"it is not in {hub_cache_dir()}", allow_download)
    return _download_encoder(repo_id)


def _cached_heads() -> Path | None:
    weights = heads_cache_dir() / f"{HEADS_CACHE_STEM}.safetensors"
    return weights if weights.is_file() and weights.with_suffix(".json").is_file() else None


def _import_into_cache(ckpt: Path, *, name: str | None = None, source: str | None = None,
                       revision: str | None = None, stem: str | None = None) -> Path:
    """Import a published ``.ckpt`` into ``M2E_HOME/heads`` once; later calls find it there."""
    from .files import file_sha256
    from .model import import_upstream_checkpoint

    if stem is None:
        stem = f"{ckpt.stem}-{file_sha256(ckpt)[:12]}"
    target = heads_cache_dir() / f"{stem}.safetensors"
    if target.is_file() and target.with_suffix(".json").is_file():
        return target
    return import_upstream_checkpoint(ckpt, target, name=name, source=source, revision=revision)


def _local_heads(path: Path) -> Path:
    from .model import checkpoint_paths

    if path.suffix == ".ckpt":
        if not path.is_file():
            raise WeightsNotFoundError(f"checkpoint {path} not found")
        return _import_into_cache(path)
    weights, config = checkpoint_paths(path)
    if weights.is_file() and config.is_file():
        return weights
    absent = [str(p) for p in (weights, config) if not p.is_file()]
    raise WeightsNotFoundError(
        f"emotion heads not found: {', '.join(absent)} missing (a checkpoint is a .safetensors file with its "
        ".json config beside it, or a published .ckpt)"
    )


def resolve_heads(path: str | os.PathLike[str] | None = None, *, allow_download: bool = True) -> Path:
    """The ``.safetensors`` file of emotion heads in our format.

    Parameters
    ----------
    path : str or PathLike, optional
        Our checkpoint (``.safetensors``, ``.json`` or stem), a published Lightning
        ``.ckpt`` (imported once into ``M2E_HOME/heads``), or a URL
        ``https://.../file.ckpt#sha256=<hex>``. Default: the published J_all heads.
    allow_download : bool
        Whether missing default heads may be downloaded.

    Returns
    -------
    Path
        A ``.safetensors`` file with its ``.json`` beside it.

    Raises
    ------
    WeightsNotFoundError
        If the heads are neither local nor downloadable.
    CheckpointError
        If a published checkpoint cannot be imported safely.
    """
    if path is not None:
        if is_url(path):
            downloaded = _fetch_cached_url(os.fspath(path), "emotion heads", allow_download)
            if downloaded.suffix != ".ckpt":
                raise ConfigError("a heads URL must point to a published Lightning .ckpt file")
            return _import_into_cache(downloaded, source=split_url(os.fspath(path))[0])
        return _local_heads(Path(path).expanduser())
    cached = _cached_heads()
    if cached is not None:
        return cached
    ckpt = cached_hub_file(HEADS_SOURCE)  # e.g. preloaded into the Hugging Face cache on a Space
    if ckpt is None:
        _require_download(HEADS_SOURCE.description, f"it is not in {heads_cache_dir()}", allow_download)
        ckpt = download_hub_file(HEADS_SOURCE)
    return _import_into_cache(
        ckpt,
        name=f"Music2Emo {HEADS_CACHE_STEM} ({HEADS_SOURCE.repo_id})",
        source=HEADS_SOURCE.address,
        revision=hub_revision(ckpt),
        stem=HEADS_CACHE_STEM,
    )


def resolve_btc(path: str | os.PathLike[str] | None = None, *, allow_download: bool = True) -> Path:
    """The BTC chord model file (``btc_model_large_voca.pt``).

    Parameters
    ----------
    path : str or PathLike, optional
        A local file or a URL ``https://...#sha256=<hex>``; default: the published model.
    allow_download : bool
        Whether a missing default may be downloaded.

    Returns
    -------
    Path

    Raises
    ------
    WeightsNotFoundError
        If the file is neither local nor downloadable.
    """
    if path is not None:
        if is_url(path):
            return _fetch_cached_url(os.fspath(path), "the BTC chord model", allow_download)
        local = Path(path).expanduser()
        if not local.is_file():
            raise WeightsNotFoundError(f"BTC chord model {local} not found")
        return local
    cached = cached_hub_file(BTC_SOURCE)
    if cached is not None:
        return cached
    _require_download(BTC_SOURCE.description, f"it is not in {hub_cache_dir()}", allow_download)
    return download_hub_file(BTC_SOURCE)


def describe_missing(*, include_btc: bool = True) -> list[str]:
    """One line per default model missing from the cache, with the command that fetches it.

    Empty when everything is in place. Meant for the app's "weights missing" notice.
    """
    items = []
    if _cached_encoder(ENCODER_REPO) is None:
        items.append(f"MERT encoder {ENCODER_REPO} (licence {ENCODER_LICENSE})")
    if _cached_heads() is None and cached_hub_file(HEADS_SOURCE) is None:
        items.append(f"{HEADS_SOURCE.description} from {HEADS_SOURCE.address}")
    if include_btc and cached_hub_file(BTC_SOURCE) is None:
        items.append(f"{BTC_SOURCE.description} from {BTC_SOURCE.address} (the chords the emotion model reads)")
    return [f"{item} is not in {m2e_home()}; fetch it with: {DOWNLOAD_COMMAND}" for item in items]


def download_all(*, include_btc: bool = True, progress: bool = True) -> dict[str, Path]:
    """Fetch every default model into the cache (what ``m2e download`` runs).

    Models already cached are not fetched again. Every model is attempted even when one
    fails; the error then lists all failures.

    Parameters
    ----------
    include_btc : bool
        Also fetch the BTC chord model.
    progress : bool
        Show download progress bars.

    Returns
    -------
    dict
        ``{"encoder": dir, "heads": .safetensors, "btc": .pt}`` (``btc`` only when included).

    Raises
    ------
    WeightsNotFoundError
        If any model could not be fetched (e.g. offline).
    """
    active = [name for name in OFFLINE_ENVS if os.environ.get(name, "").strip().lower() in _TRUE]
    if active:
        raise WeightsNotFoundError(
            f"cannot download: {active[0]}={os.environ[active[0]]} switches downloads off; unset it on a "
            f"machine with internet access and run {DOWNLOAD_COMMAND} again"
        )
    steps: dict[str, Callable[[], Path]] = {"encoder": resolve_encoder, "heads": resolve_heads}
    if include_btc:
        steps["btc"] = resolve_btc
    fetched: dict[str, Path] = {}
    failures: list[str] = []
    with _hub_progress(progress):
        for name, resolve in steps.items():
            try:
                fetched[name] = resolve()
            except M2EError as error:
                failures.append(f"{name}: {error}")
    if failures:
        raise WeightsNotFoundError("some models could not be fetched:\n" + "\n".join(failures))
    return fetched

"""The explorer's settings, from the environment, checked once at start.

Environment
-----------
``M2E_MAX_MINUTES``   longest track analysed (default 15)
``M2E_MAX_UPLOAD``    largest upload, e.g. ``200mb`` (default: the longest track as a 16-bit
                      44.1 kHz stereo WAV, so every advertised track fits uncompressed)
``M2E_CONCURRENCY``   analyses run at once (default 2)
``M2E_HOST``          ``1`` binds 0.0.0.0 (so does ``SPACE_ID``, set on a Hugging Face Space),
                      another value binds that address; default 127.0.0.1
``PORT`` / ``GRADIO_SERVER_PORT``   port
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from m2e_core.errors import ConfigError

#: Bytes per second of the reference upload: 16-bit PCM, 44.1 kHz, stereo.
WAV_BYTES_PER_SECOND = 44_100 * 2 * 2
#: Room for a WAV header and its metadata chunks.
WAV_HEADER_BYTES = 1 << 20
DEFAULT_MAX_MINUTES = 15.0
DEFAULT_CONCURRENCY = 2
_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
_TRUE = ("1", "true", "yes", "on")


def wav_bytes(minutes: float) -> int:
    """Size of ``minutes`` of 16-bit 44.1 kHz stereo WAV, with room for its header, in bytes."""
    return int(math.ceil(minutes * 60 * WAV_BYTES_PER_SECOND)) + WAV_HEADER_BYTES


def parse_size(text: str) -> int:
    """``"160mb"`` -> bytes (units b, kb, mb, gb in powers of 1024, as Gradio reads them).

    Examples
    --------
    >>> parse_size("160mb"), parse_size("512kb"), parse_size("1000")
    (167772160, 524288, 1000)
    """
    cleaned = text.strip().lower().replace(" ", "")
    digits = len(cleaned) - len(cleaned.lstrip("0123456789"))
    number, unit = cleaned[:digits], cleaned[digits:] or "b"
    if not number or unit not in _UNITS or int(number) <= 0:
        raise ConfigError(f"M2E_MAX_UPLOAD must be a size such as 200mb, got {text!r}")
    return int(number) * _UNITS[unit]


def megabytes(count: int) -> str:
    """``158_760_000`` -> ``"159 MB"`` (decimal megabytes, as file managers show them)."""
    return f"{count / 1e6:.0f} MB"


@dataclass(frozen=True)
class Settings:
    """What the operator chose (see the module docstring)."""

    max_minutes: float = DEFAULT_MAX_MINUTES
    max_upload_bytes: int = wav_bytes(DEFAULT_MAX_MINUTES)
    concurrency: int = DEFAULT_CONCURRENCY

    @property
    def max_seconds(self) -> float:
        return self.max_minutes * 60.0

    @property
    def longest_wav_minutes(self) -> float:
        """The longest 16-bit 44.1 kHz stereo WAV that fits the upload limit, in minutes."""
        return max(0.0, (self.max_upload_bytes - WAV_HEADER_BYTES) / WAV_BYTES_PER_SECOND / 60.0)

    def upload_advice(self) -> str:
        """What to upload, in one line, true for these limits."""
        text = f"up to {self.max_minutes:g} min; files up to {megabytes(self.max_upload_bytes)}"
        if self.longest_wav_minutes + 1e-9 < self.max_minutes:
            text += (f" (a WAV up to {math.floor(self.longest_wav_minutes):.0f} min: for longer tracks upload FLAC or MP3)")
        else:
            text += " (any such track as WAV; FLAC or MP3 upload faster)"
        return text

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment describes.

        Raises
        ------
        ConfigError
            A variable that does not parse, named with its value.
        """
        env = os.environ if environ is None else environ
        minutes_text = env.get("M2E_MAX_MINUTES", "").strip()
        try:
            minutes = float(minutes_text) if minutes_text else DEFAULT_MAX_MINUTES
        except ValueError as error:
            raise ConfigError(f"M2E_MAX_MINUTES must be a number of minutes, got {minutes_text!r}") from error
        if not math.isfinite(minutes) or not 0 < minutes <= 24 * 60:
            raise ConfigError(f"M2E_MAX_MINUTES must be between 0 and 1440, got {minutes_text!r}")
        upload_text = env.get("M2E_MAX_UPLOAD", "").strip()
        upload = parse_size(upload_text) if upload_text else wav_bytes(minutes)
        concurrency_text = env.get("M2E_CONCURRENCY", "").strip() or str(DEFAULT_CONCURRENCY)
        if not concurrency_text.isdigit() or int(concurrency_text) < 1:
            raise ConfigError(f"M2E_CONCURRENCY must be a whole number >= 1, got {concurrency_text!r}")
        return cls(max_minutes=minutes, max_upload_bytes=upload, concurrency=int(concurrency_text))


def server_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``launch()`` arguments from the environment: host, port, upload limit, no SSR."""
    env = os.environ if environ is None else environ
    port_text = env.get("PORT") or env.get("GRADIO_SERVER_PORT")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"PORT must be a port number, got {port_text!r}")
        port = int(port_text)
    host_flag = env.get("M2E_HOST", "").strip()
    if env.get("SPACE_ID") or host_flag.lower() in _TRUE:
        host = "0.0.0.0"
    elif host_flag:
        host = host_flag
    else:
        host = "127.0.0.1"
    return {
        "server_name": host,
        "server_port": port,
        "max_file_size": Settings.from_env(env).max_upload_bytes,
        "ssr_mode": False,
        "show_error": True,
    }

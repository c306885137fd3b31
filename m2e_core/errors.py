"""One error hierarchy for m2e.

Every error the library raises on purpose derives from :class:`M2EError`, so callers
(the CLI, the app) can catch one type and show ``str(error)`` to a user: messages say
what was wrong and what to do about it.
"""

from __future__ import annotations


class M2EError(Exception):
    """Base class of every error m2e raises on purpose."""


class AudioError(M2EError):
    """The audio given cannot be analysed."""


class AudioDecodeError(AudioError):
    """The file is missing, empty, truncated, or not audio in a format we can decode."""


class AudioTooLargeError(AudioError):
    """The file or the decoded audio exceeds the configured size or duration limit."""


class AudioTooShortError(AudioError):
    """The audio is shorter than the minimum analysable duration."""


class SilentAudioError(AudioError):
    """The audio contains no signal (digital silence or near it)."""


class InvalidAudioError(AudioError):
    """The samples are not usable: NaN/inf values, wrong shape or dtype, bad sample rate."""


class ModelError(M2EError):
    """A model, config or checkpoint is invalid or incompatible."""


class UnsupportedEncoderError(ModelError):
    """The encoder config asks for features that HuBERT does not have."""


class CheckpointError(ModelError):
    """A checkpoint file is malformed, unsafe, or does not match the architecture."""


class WeightsNotFoundError(M2EError):
    """Weights are neither on disk nor downloadable (e.g. offline)."""


class ChordRecognitionError(M2EError):
    """A chord backend failed or is unavailable."""


class ConfigError(M2EError):
    """A user-supplied option or config value is invalid."""


class LabelError(M2EError):
    """A user label is invalid (out-of-range valence/arousal, unknown tag, ...)."""

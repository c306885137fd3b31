"""The multitask emotion model: published architecture, our checkpoint format, safe import."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from m2e_core.errors import CheckpointError, ConfigError, ModelError, WeightsNotFoundError
from m2e_core.model import (
    HeadsConfig,
    MultitaskEmotionModel,
    checkpoint_paths,
    file_sha256,
    import_upstream_checkpoint,
    load_heads,
    make_tiny_heads,
    read_upstream_checkpoint,
    save_heads,
    sinusoidal_positions,
)
from m2e_core.vocab import tag_names

#: Parameter names and shapes of the published FeedforwardModelMTAttnCK checkpoint (its
#: Lightning keys carry a "model." prefix): 36 tensors, 1,072,058 scalars for 1536-d MERT.
PUBLISHED_KEYS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("chord_root_embedding.weight", (14, 4)),
    ("chord_attr_embedding.weight", (14, 4)),
    ("chord_transformer.layers.0.self_attn.in_proj_weight", (24, 8)),
    ("chord_transformer.layers.0.self_attn.in_proj_bias", (24,)),
    ("chord_transformer.layers.0.self_attn.out_proj.weight", (8, 8)),
    ("chord_transformer.layers.0.self_attn.out_proj.bias", (8,)),
    ("chord_transformer.layers.0.linear1.weight", (64, 8)),
    ("chord_transformer.layers.0.linear1.bias", (64,)),
    ("chord_transformer.layers.0.linear2.weight", (8, 64)),
    ("chord_transformer.layers.0.linear2.bias", (8,)),
    ("chord_transformer.layers.0.norm1.weight", (8,)),
    ("chord_transformer.layers.0.norm1.bias", (8,)),
    ("chord_transformer.layers.0.norm2.weight", (8,)),
    ("chord_transformer.layers.0.norm2.bias", (8,)),
    ("chord_transformer.layers.1.self_attn.in_proj_weight", (24, 8)),
    ("chord_transformer.layers.1.self_attn.in_proj_bias", (24,)),
    ("chord_transformer.layers.1.self_attn.out_proj.weight", (8, 8)),
    ("chord_transformer.layers.1.self_attn.out_proj.bias", (8,)),
    ("chord_transformer.layers.1.linear1.weight", (64, 8)),
    ("chord_transformer.layers.1.linear1.bias", (64,)),
    ("chord_transformer.layers.1.linear2.weight", (8, 64)),
    ("chord_transformer.layers.1.linear2.bias", (8,)),
    ("chord_transformer.layers.1.norm1.weight", (8,)),
    ("chord_transformer.layers.1.norm1.bias", (8,)),
    ("chord_transformer.layers.1.norm2.weight", (8,)),
    ("chord_transformer.layers.1.norm2.bias", (8,)),
    ("input_proj.0.weight", (512, 1545)),
    ("input_proj.0.bias", (512,)),
    ("classification_branch.0.weight", (256, 512)),
    ("classification_branch.0.bias", (256,)),
    ("classification_branch.2.weight", (56, 256)),
    ("classification_branch.2.bias", (56,)),
    ("regression_branch.0.weight", (256, 512)),
    ("regression_branch.0.bias", (256,)),
    ("regression_branch.2.weight", (2, 256)),
    ("regression_branch.2.bias", (2,)),
)
PUBLISHED_PARAMETERS = 1_072_058
TINY_DIM = 12


def published_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict((name, torch.randn(shape, generator=generator)) for name, shape in PUBLISHED_KEYS)


def random_inputs(batch: int, dim: int, tokens: int = 100, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mert = torch.randn(batch, dim, generator=generator)
    roots = torch.randint(0, 14, (batch, tokens), generator=generator)
    qualities = torch.randint(0, 14, (batch, tokens), generator=generator)
    mode = torch.randint(0, 2, (batch,), generator=generator)
    return mert, roots, qualities, mode


@pytest.fixture(scope="module")
def tiny_model() -> MultitaskEmotionModel:
    torch.manual_seed(3)
    return MultitaskEmotionModel(TINY_DIM).eval()


# -- architecture -----------------------------------------------------------------------------


def test_state_dict_equals_published_names_and_shapes():
    model = MultitaskEmotionModel(1536)
    assert [(name, tuple(t.shape)) for name, t in model.state_dict().items()] == list(PUBLISHED_KEYS)
    assert model.num_parameters() == PUBLISHED_PARAMETERS
    assert sum(math.prod(shape) for _, shape in PUBLISHED_KEYS) == PUBLISHED_PARAMETERS
    # The positional encoding is a constant that moves with the model but is never saved.
    assert "positional_encoding" not in model.state_dict()
    assert dict(model.named_buffers())["positional_encoding"].shape == (1, 100, 8)
    assert all(not name.startswith("positional") for name, _ in model.named_parameters())


def test_published_state_dict_loads_strictly():
    state = published_state_dict()
    model = MultitaskEmotionModel(1536)
    model.load_state_dict(state, strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    with pytest.raises(RuntimeError, match="Missing key"):
        MultitaskEmotionModel(1536).load_state_dict(OrderedDict(list(state.items())[1:]), strict=True)


def test_transformer_is_post_norm_with_published_sizes():
    layer = MultitaskEmotionModel(TINY_DIM).chord_transformer.layers[0]
    assert layer.norm_first is False
    assert layer.self_attn.num_heads == 8 and layer.self_attn.embed_dim == 8
    assert layer.linear1.out_features == 64 and layer.dropout.p == pytest.approx(0.1)


def test_positional_encoding_values():
    encoding = sinusoidal_positions(100, 8)
    assert encoding.shape == (100, 8)
    assert torch.equal(encoding[0], torch.tensor([0.0, 1.0] * 4))
    for position in (1, 7, 99):
        for i in range(4):
            angle = position / 10000 ** (2 * i / 8)
            assert encoding[position, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert encoding[position, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_forward_follows_published_order(tiny_model):
    """Embed, add positions, then prepend a zero CLS token; CLS output ++ MERT ++ mode."""
    mert, roots, qualities, mode = random_inputs(3, TINY_DIM, tokens=37)
    m = tiny_model
    with torch.no_grad():
        chords = torch.cat([m.chord_root_embedding(roots), m.chord_attr_embedding(qualities)], dim=-1)
        chords = chords + sinusoidal_positions(100, 8)[:37]
        sequence = torch.cat([torch.zeros(3, 1, 8), chords], dim=1)
        cls_output = m.chord_transformer(sequence)[:, 0, :]
        trunk = m.input_proj(torch.cat([mert, cls_output, mode.float().unsqueeze(1)], dim=1))
        expected = (m.classification_branch(trunk), m.regression_branch(trunk))
        tag_logits, va = m(mert, roots, qualities, mode)
        # Prepending the CLS token before adding positions would give different outputs.
        wrong = torch.cat([torch.zeros(3, 1, 8), torch.cat(
            [m.chord_root_embedding(roots), m.chord_attr_embedding(qualities)], dim=-1)], dim=1)
        wrong = m.chord_transformer(wrong + sinusoidal_positions(100, 8)[:38])[:, 0, :]
    torch.testing.assert_close(tag_logits, expected[0])
    torch.testing.assert_close(va, expected[1])
    assert tag_logits.shape == (3, 56) and va.shape == (3, 2)
    assert not torch.allclose(wrong, cls_output)


def test_mode_column_or_vector_and_it_matters(tiny_model):
    mert, roots, qualities, _ = random_inputs(2, TINY_DIM)
    with torch.no_grad():
        as_vector = tiny_model(mert, roots, qualities, torch.tensor([0, 1]))
        as_column = tiny_model(mert, roots, qualities, torch.tensor([[0.0], [1.0]]))
        all_major = tiny_model(mert, roots, qualities, torch.tensor([0, 0]))
    torch.testing.assert_close(as_vector, as_column)
    torch.testing.assert_close(as_vector[0][0], all_major[0][0])
    assert not torch.allclose(as_vector[0][1], all_major[0][1])


def test_trunk_feeds_both_branches(tiny_model):
    inputs = random_inputs(4, TINY_DIM)
    with torch.no_grad():
        shared = tiny_model.trunk(*inputs)
        tag_logits, va = tiny_model(*inputs)
    assert shared.shape == (4, 512) and bool((shared >= 0).all())  # after the ReLU
    torch.testing.assert_close(tiny_model.classification_branch(shared), tag_logits)
    torch.testing.assert_close(tiny_model.regression_branch(shared), va)


def test_parameter_groups_partition_the_model_and_allow_selective_updates():
    model = MultitaskEmotionModel(TINY_DIM)
    groups = [model.shared_parameters(), model.tag_parameters(), model.va_parameters()]
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert sum(p.numel() for p in model.tag_parameters()) == 256 * 512 + 256 + 56 * 256 + 56
    assert sum(p.numel() for p in model.va_parameters()) == 256 * 512 + 256 + 2 * 256 + 2
    tag_logits, _ = model(*random_inputs(2, TINY_DIM))
    tag_logits.sum().backward()
    assert all(p.grad is None for p in model.va_parameters())
    assert all(p.grad is not None for p in model.tag_parameters())
    assert model.input_proj[0].weight.grad is not None


def test_eval_is_deterministic(tiny_model):
    inputs = random_inputs(2, TINY_DIM)
    with torch.no_grad():
        first, second = tiny_model(*inputs), tiny_model(*inputs)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, r, q, k: (m[:, :-1], r, q, k), "mert must be"),
        (lambda m, r, q, k: (m.long(), r, q, k), "float"),
        (lambda m, r, q, k: (m, torch.zeros(2, 101, dtype=torch.long), torch.zeros(2, 101, dtype=torch.long), k),
         "at most 100"),
        (lambda m, r, q, k: (m, r.clone().fill_(14), q, k), "outside 0..13"),
        (lambda m, r, q, k: (m, r, q.clone().fill_(-1), k), "outside 0..13"),
        (lambda m, r, q, k: (m, r.float(), q, k), "integer"),
        (lambda m, r, q, k: (m, r, q[:, :50], k), "same shape"),
        (lambda m, r, q, k: (m, r[:1], q[:1], k), "batch=2"),
        (lambda m, r, q, k: (m, r, q, torch.zeros(3)), "mode must be"),
    ],
)
def test_bad_inputs_are_model_errors(tiny_model, change, message):
    inputs = change(*random_inputs(2, TINY_DIM))
    with pytest.raises(ModelError, match=message):
        tiny_model(*inputs)


def test_short_and_empty_chord_sequences(tiny_model):
    mert, roots, qualities, mode = random_inputs(2, TINY_DIM, tokens=1)
    with torch.no_grad():
        assert tiny_model(mert, roots, qualities, mode)[0].shape == (2, 56)
        empty = torch.zeros(2, 0, dtype=torch.long)
        assert tiny_model(mert, empty, empty, mode)[1].shape == (2, 2)


# -- config -------------------------------------------------------------------------------------


def test_config_defaults_and_round_trip():
    config = HeadsConfig(tag_thresholds=[0.2] * 56, metrics={"pr_auc": 0.15}, provenance={"name": "x"})
    assert config.tag_names == tag_names() and config.num_tags == 56
    assert config.tasks == ("tags", "va") and config.tag_thresholds == (0.2,) * 56
    data = json.loads(config.to_json())
    assert data["format"] == "m2e-heads" and data["format_version"] == 1
    assert data["architecture"] == "FeedforwardModelMTAttnCK"
    assert HeadsConfig.from_dict(data) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"hidden_dim": 2.5}, "hidden_dim"),
        ({"tag_names": ()}, "tag_names"),
        ({"tag_names": ("a", "a")}, "duplicates"),
        ({"tag_names": "happy"}, "must be a list"),
        ({"tag_thresholds": (0.5,) * 3}, "3 values for 56 tags"),
        ({"tag_thresholds": (1.5,) * 56}, r"in \[0, 1\]"),
        ({"tag_thresholds": (float("nan"),) * 56}, r"in \[0, 1\]"),
        ({"tasks": ()}, "subset"),
        ({"tasks": ("tags", "genre")}, "subset"),
        ({"tasks": ("va", "va")}, "subset"),
        ({"tasks": ("va",), "tag_thresholds": (0.5,) * 56}, "not trained for tags"),
        ({"max_chord_tokens": 64}, "100"),
        ({"mode_source": ""}, "mode_source"),
        ({"metrics": [1]}, "metrics"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        HeadsConfig(**kwargs)


@pytest.mark.parametrize(
    "update, message",
    [
        ({"format": "other"}, "not an m2e heads config"),
        ({"format_version": 99}, "upgrade m2e"),
        ({"architecture": "Something"}, "architecture"),
        ({"surprise": 1}, "unknown keys"),
    ],
)
def test_config_from_dict_rejects(update, message):
    data = HeadsConfig().to_dict() | update
    with pytest.raises(ConfigError, match=message):
        HeadsConfig.from_dict(data)


def test_config_must_be_json_serialisable():
    with pytest.raises(ConfigError, match="JSON"):
        HeadsConfig(provenance={"bad": object()}).to_json()


# -- our checkpoint format ----------------------------------------------------------------------


def test_save_and_load_round_trip(tiny_model, tmp_path):
    config = HeadsConfig(embedding_dim=TINY_DIM, tag_thresholds=tuple(0.1 + i / 100 for i in range(56)),
                         metrics={"jamendo": {"pr_auc": 0.15}}, training_config={"lr": 1e-4},
                         provenance={"name": "round-trip"})
    written = save_heads(tiny_model, config, tmp_path / "heads.safetensors")
    assert written == tmp_path / "heads.safetensors"
    assert sorted(os.listdir(tmp_path)) == ["heads.json", "heads.safetensors"]  # no temporary files left
    document = json.loads((tmp_path / "heads.json").read_text())
    assert document["weights_sha256"] == file_sha256(written)
    inputs = random_inputs(3, TINY_DIM)
    with torch.no_grad():
        expected = tiny_model(*inputs)
    for path in (written, tmp_path / "heads.json", tmp_path / "heads"):
        model, loaded = load_heads(path)
        assert loaded == config and not model.training
        with torch.no_grad():
            torch.testing.assert_close(model(*inputs), expected, rtol=0, atol=0)


def test_checkpoint_paths_accepts_either_file_or_stem(tmp_path):
    pair = (tmp_path / "a.b.safetensors", tmp_path / "a.b.json")
    assert checkpoint_paths(tmp_path / "a.b.safetensors") == pair
    assert checkpoint_paths(tmp_path / "a.b.json") == pair
    assert checkpoint_paths(str(tmp_path / "a.b")) == pair


def test_save_refuses_a_config_that_does_not_fit(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="does not match its config"):
        save_heads(tiny_model, HeadsConfig(embedding_dim=TINY_DIM + 1), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def saved(tiny_model, tmp_path) -> tuple[Path, Path]:
    weights = save_heads(tiny_model, HeadsConfig(embedding_dim=TINY_DIM), tmp_path / "heads")
    return weights, weights.with_suffix(".json")


def test_missing_files_are_weights_not_found(saved):
    weights, config = saved
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_heads(weights.with_name("absent.safetensors"))
    config.unlink()
    with pytest.raises(WeightsNotFoundError, match="heads.json"):
        load_heads(weights)


def test_corrupt_config_is_a_checkpoint_error(saved):
    weights, config = saved
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid JSON"):
        load_heads(weights)
    config.write_text(json.dumps({"format": "m2e-heads", "tasks": ["genre"]}))
    with pytest.raises(CheckpointError, match="subset"):
        load_heads(weights)


def test_weights_that_do_not_belong_to_the_config_are_detected(saved):
    weights, _ = saved
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_heads(weights)


def test_corrupt_safetensors_is_a_checkpoint_error(saved):
    weights, config = saved
    weights.write_bytes(b"garbage" * 10)
    document = json.loads(config.read_text())
    document["weights_sha256"] = file_sha256(weights)
    config.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_heads(weights)


def test_shape_mismatch_names_the_keys(saved):
    weights, config = saved
    document = json.loads(config.read_text())
    document["embedding_dim"] = TINY_DIM + 4
    config.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"input_proj\.0\.weight: \(512, 21\) != \(512, 25\)"):
        load_heads(weights)


def test_tag_list_must_match_the_vocabulary_unless_told(saved):
    weights, config = saved
    document = json.loads(config.read_text())
    document["tag_names"] = list(reversed(document["tag_names"]))
    config.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="index 0"):
        load_heads(weights)
    _, loaded = load_heads(weights, strict_tags=False)
    assert loaded.tag_names == tuple(reversed(tag_names()))


def test_tiny_heads(tmp_path):
    before = torch.random.get_rng_state()
    path = make_tiny_heads(tmp_path / "tiny.safetensors", embedding_dim=TINY_DIM, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    model, config = load_heads(path)
    assert config.embedding_dim == TINY_DIM and "tests only" in config.provenance["source"]
    with torch.no_grad():
        _, va = model(*random_inputs(4, TINY_DIM))
    assert bool(((va > 1) & (va < 9)).all())
    again, _ = load_heads(make_tiny_heads(tmp_path / "again", embedding_dim=TINY_DIM, seed=5))
    other, _ = load_heads(make_tiny_heads(tmp_path / "other", embedding_dim=TINY_DIM, seed=6))
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    assert not torch.equal(other.state_dict()["input_proj.0.weight"], model.state_dict()["input_proj.0.weight"])


# -- published Lightning checkpoints ------------------------------------------------------------


def _write_marker(path: str) -> int:
    Path(path).write_text("code from the checkpoint ran")
    return 0


class MarkerPayload:
    """Unpickling this runs ``_write_marker``: a stand-in for a malicious object."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


class ConfigLike:
    """Shaped like an omegaconf DictConfig: rebuilt through NEWOBJ and BUILD."""

    def __init__(self) -> None:
        self._content = {"lr": 1e-4, "datasets": ["jamendo", "deam"]}


class AttributeDictLike(dict):
    """A dict subclass, like Lightning's AttributeDict: rebuilt through SETITEMS."""


class ShellPayload:
    """Unpickling this runs a command through ``how`` (os.system, subprocess.call or eval)."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "os.system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "subprocess.call":
            return (subprocess.call, (["touch", str(self.marker)],))
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def lightning_checkpoint(path: Path, *, state=None, extra: dict | None = None) -> Path:
    state_dict = OrderedDict(("model." + name, tensor) for name, tensor in (state or published_state_dict()).items())
    state_dict["loss_fn.pos_weight"] = torch.full((56,), 3.0)
    checkpoint = {
        "epoch": 41,
        "global_step": 12345,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"completed": 41}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 1e-4}]}],
        "lr_schedulers": [],
        **(extra or {}),
    }
    torch.save(checkpoint, path)
    return path


@contextlib.contextmanager
def pickled_as(module_name: str, *objects):
    """Pickle ``objects`` (classes, functions) as if they lived in ``module_name`` (e.g. omegaconf)."""
    module = types.ModuleType(module_name)
    saved = [(item, item.__module__) for item in objects]
    for item in objects:
        item.__module__ = module_name
        setattr(module, item.__qualname__, item)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        yield
    finally:
        if previous is None:
            del sys.modules[module_name]
        else:
            sys.modules[module_name] = previous
        for item, original in saved:
            item.__module__ = original


def test_import_published_checkpoint_never_runs_its_code(tmp_path):
    marker = tmp_path / "marker"
    hparams = AttributeDictLike(config=ConfigLike(), payload=MarkerPayload(marker), lr=1e-4)
    # Metadata classes as a Lightning checkpoint names them (omegaconf, lightning): placeholders.
    with pickled_as("omegaconf", ConfigLike, _write_marker), \
            pickled_as("lightning_fabric", AttributeDictLike):
        ckpt = lightning_checkpoint(tmp_path / "J_all.ckpt", extra={"hyper_parameters": hparams})
    out = import_upstream_checkpoint(ckpt, tmp_path / "out" / "heads.safetensors", name="J_all")
    assert not marker.exists()

    model, config = load_heads(out)
    for name, tensor in published_state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert config.embedding_dim == 1536 and config.tag_names == tag_names()
    provenance = config.provenance
    assert provenance["name"] == "J_all" and provenance["source"] == "J_all.ckpt"
    assert provenance["sha256"] == file_sha256(ckpt)
    assert provenance["dropped_keys"] == ["loss_fn.pos_weight"]
    assert provenance["upstream_epoch"] == 41 and provenance["upstream_global_step"] == 12345
    assert set(provenance["placeholder_globals"]) == {
        "omegaconf._write_marker", "omegaconf.ConfigLike", "lightning_fabric.AttributeDictLike"}

    # The payload is live: an ordinary unpickling of the same file runs it.
    with pickled_as("omegaconf", ConfigLike, _write_marker), \
            pickled_as("lightning_fabric", AttributeDictLike):
        torch.load(ckpt, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("target", ["timeit.timeit", "pdb.Pdb", "builtins.print", "own-module"])
def test_globals_outside_the_allow_list_are_refused_in_one_line(tmp_path, target):
    if target == "own-module":
        payload, name = ConfigLike(), f"{__name__}.ConfigLike"
    else:
        module, function = target.split(".")
        payload, name = CallPayload(getattr(importlib.import_module(module), function)), target
    ckpt = lightning_checkpoint(tmp_path / "odd.ckpt", extra={"hyper_parameters": {"x": payload}})
    with pytest.raises(CheckpointError) as caught:
        import_upstream_checkpoint(ckpt, tmp_path / "out")
    message = str(caught.value)
    assert name in message and "refus" in message and "\n" not in message
    assert "weights_only=False" not in message
    assert not (tmp_path / "out.safetensors").exists()


class CallPayload:
    """Unpickling this calls ``function()``."""

    def __init__(self, function) -> None:
        self.function = function

    def __reduce__(self):
        return (self.function, ())


@pytest.mark.parametrize("how", ["os.system", "subprocess.call", "eval"])
def test_checkpoint_naming_code_execution_is_refused(tmp_path, how):
    marker = tmp_path / "shell-marker"
    payload = ShellPayload(marker, how)
    ckpt = lightning_checkpoint(tmp_path / "evil.ckpt", extra={"hyper_parameters": {"x": payload}})
    with pytest.raises(CheckpointError, match="refus"):
        import_upstream_checkpoint(ckpt, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_plain_checkpoint_loads_with_weights_only(tmp_path):
    ckpt = lightning_checkpoint(tmp_path / "plain.ckpt")
    upstream = read_upstream_checkpoint(ckpt)
    assert upstream.placeholder_globals == ()
    assert upstream.dropped_keys == ("loss_fn.pos_weight",)
    assert upstream.metadata == {"epoch": 41, "global_step": 12345, "pytorch-lightning_version": "2.4.0"}
    assert list(upstream.state_dict) == [name for name, _ in PUBLISHED_KEYS]


def test_bare_state_dict_is_accepted(tmp_path):
    path = tmp_path / "bare.ckpt"
    torch.save({"model." + name: t for name, t in published_state_dict().items()}, path)
    model, _ = load_heads(import_upstream_checkpoint(path, tmp_path / "bare"))
    assert model.num_parameters() == PUBLISHED_PARAMETERS


def test_missing_key_is_named(tmp_path):
    state = published_state_dict()
    del state["regression_branch.2.bias"]
    ckpt = lightning_checkpoint(tmp_path / "partial.ckpt", state=state)
    with pytest.raises(CheckpointError, match=r"missing keys \['regression_branch\.2\.bias'\]"):
        import_upstream_checkpoint(ckpt, tmp_path / "out")


def test_shape_mismatch_is_named(tmp_path):
    state = published_state_dict()
    state["classification_branch.2.weight"] = torch.zeros(50, 256)
    ckpt = lightning_checkpoint(tmp_path / "shape.ckpt", state=state)
    with pytest.raises(CheckpointError, match=r"classification_branch\.2\.weight: \(50, 256\) != \(56, 256\)"):
        import_upstream_checkpoint(ckpt, tmp_path / "out")


def test_keys_outside_the_network_are_not_dropped_silently(tmp_path):
    ckpt = tmp_path / "teacher.ckpt"
    state = {"model." + name: t for name, t in published_state_dict().items()}
    state["teacher.input_proj.0.weight"] = torch.zeros(2, 2)
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(CheckpointError, match="teacher.input_proj.0.weight"):
        import_upstream_checkpoint(ckpt, tmp_path / "out")


def test_unreadable_or_absent_checkpoint(tmp_path):
    with pytest.raises(WeightsNotFoundError):
        import_upstream_checkpoint(tmp_path / "absent.ckpt", tmp_path / "out")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"PK\x03\x04 not really a zip" * 20)
    with pytest.raises(CheckpointError):
        import_upstream_checkpoint(junk, tmp_path / "out")
    not_a_dict = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], not_a_dict)
    with pytest.raises(CheckpointError, match="no state dict"):
        import_upstream_checkpoint(not_a_dict, tmp_path / "out")


def test_the_same_heads_saved_twice_are_the_same_bytes(tmp_path):
    # A library run recognises its models by sha256: re-saving the same weights must not change it.
    import hashlib

    digests = {
        hashlib.sha256(make_tiny_heads(tmp_path / f"heads-{copy}.safetensors", embedding_dim=8, seed=3)
                       .read_bytes()).hexdigest()
        for copy in range(6)
    }
    assert len(digests) == 1
    model, config = load_heads(tmp_path / "heads-0.safetensors")
    assert config.embedding_dim == 8

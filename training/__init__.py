"""Training for m2e: datasets, a feature cache, teacher/student solvers and evaluation.

The package turns the four public emotion datasets (MTG-Jamendo mood/theme, DEAM, PMEmo,
EmoMusic) or any manifest in the :mod:`m2e_core.labels` format into checkpoints that
:func:`m2e_core.model.load_heads`, the Analyzer, the command line and the app read directly.

Stages (each one a subcommand of ``m2e-train``, also ``python -m training``):

1. ``synth``: write a small synthetic dataset whose labels follow from the audio (smoke runs).
2. ``extract``: MERT segment embeddings, chords and key per track into a content-addressed
   feature cache (resumable; shard across GPUs with ``torchrun``).
3. ``train``: one single-task teacher per dataset, then the multitask student distilled from
   them, with selective branch updates and segment-span augmentation.
4. ``evaluate``: macro PR-AUC / ROC-AUC over tags, R2 / RMSE per dimension, per dataset.

``m2e_core`` never imports this package.
"""

from __future__ import annotations

__all__: list[str] = []

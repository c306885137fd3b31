"""Command line: ``python -m training {synth,datasets,extract,train,evaluate}``.

Examples::

    python -m training synth --out /tmp/synth
    python -m training datasets --config training/configs/student_all.yaml --workdir /data/m2e
    torchrun --nproc_per_node=4 -m training extract --config training/configs/student_all.yaml --workdir /data/m2e
    python -m training train --config training/configs/smoke.yaml --workdir /tmp/m2e-smoke
    python -m training evaluate --config training/configs/student_all.yaml --checkpoint runs/.../student.safetensors

Exit codes: 0 success, 1 error (one line on stderr), 2 extraction finished with failed tracks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from m2e_core.errors import M2EError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    parser.add_argument("--quiet", action="store_true", help="only warnings and the final report")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the synthetic sanity dataset")
    synth.add_argument("--out", required=True, help="directory for audio/, manifest.csv, truth.json")
    synth.add_argument("--tracks", type=int, default=120)
    synth.add_argument("--seconds", type=float, default=4.5)
    synth.add_argument("--seed", type=int, default=0)

    for name, text in (("datasets", "parse the config's datasets and print their split sizes"),
                       ("extract", "extract missing features into the cache (torchrun-aware)"),
                       ("train", "train teachers and/or the student"),
                       ("evaluate", "evaluate a checkpoint on the config's datasets")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", required=True, help="YAML run config")
        command.add_argument("--workdir", default=None, help="base of the config's relative paths (default: cwd)")
        if name == "train":
            command.add_argument("--stage", choices=("teachers", "student", "all"), default=None,
                                 help="override the config's stages")
        if name == "evaluate":
            command.add_argument("--checkpoint", required=True)
            command.add_argument("--split", choices=("train", "validation", "test"), action="append",
                                 help="split(s) to evaluate (default: test)")
            command.add_argument("--out", default=None, help="directory for evaluation.csv/.json")
        if name == "extract":
            command.add_argument("--no-progress", action="store_true")
    return parser


def _synth(args: argparse.Namespace) -> int:
    from .synthetic import generate

    manifest = generate(args.out, tracks=args.tracks, seconds=args.seconds, seed=args.seed)
    print(f"wrote {args.tracks} tracks; manifest: {manifest}")
    return EXIT_OK


def _datasets(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config, workdir=args.workdir)
    for spec in config.datasets:
        dataset = spec.load()
        counts = dataset.counts()
        print(f"{dataset.name:<16} {dataset.kind:<9} {dataset.task:<4} "
              + "  ".join(f"{split} {count}" for split, count in counts.items()) + f"  total {len(dataset.tracks)}")
    return EXIT_OK


def _extract(args: argparse.Namespace) -> int:
    from .cache import DistributedContext, FeatureCache, extract_features
    from .config import load_config

    config = load_config(args.config, workdir=args.workdir)
    config.apply_cpu_threads()
    if config.synthetic is not None and not (config.synthetic.out / "manifest.csv").is_file():
        from .synthetic import generate

        generate(config.synthetic.out, tracks=config.synthetic.tracks, seconds=config.synthetic.seconds,
                 seed=config.synthetic.seed)
    context = DistributedContext.from_environment()
    try:
        datasets = [spec.load() for spec in config.datasets]
        report = extract_features(datasets, config.features, FeatureCache(config.cache_dir), context=context,
                                  progress=not args.no_progress)
    finally:
        context.shutdown()
    prefix = f"rank {context.rank}/{context.world_size}: " if context.distributed else ""
    print(f"{prefix}extracted {report.extracted}, already cached {report.skipped}, failed {len(report.failed)} "
          f"in {report.seconds:.1f}s ({report.tracks_per_second:.2f} tracks/s, "
          f"{report.audio_seconds / max(report.seconds, 1e-9):.1f} s of audio per s)")
    for track, error in report.failed[:20]:
        print(f"  failed {track}: {error}", file=sys.stderr)
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .solver import run

    config = load_config(args.config, workdir=args.workdir)
    stages = None if args.stage is None else (("teachers", "student") if args.stage == "all" else (args.stage,))
    summary = run(config, stages=stages)
    print(summary.table)
    print(f"report: {summary.report_csv} {summary.report_json}")
    for model in summary.models:
        print(f"checkpoint ({model.label}): {model.checkpoint}")
    if config.features.encoder == "tiny" and summary.models:
        encoder = config.cache_dir / "encoders" / "tiny-seed0"
        print(f"analyze with: python -m m2e_core analyze <audio> --encoder {encoder} "
              f"--checkpoint {summary.models[-1].checkpoint}")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluate import format_table, write_report
    from .solver import evaluate_checkpoint

    config = load_config(args.config, workdir=args.workdir)
    rows = evaluate_checkpoint(config, Path(args.checkpoint), splits=tuple(args.split or ("test",)))
    print(format_table(rows))
    if args.out:
        csv_path, json_path = write_report(rows, args.out, stem="evaluation")
        print(f"report: {csv_path} {json_path}")
    return EXIT_OK


_COMMANDS = {"synth": _synth, "datasets": _datasets, "extract": _extract, "train": _train, "evaluate": _evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return _COMMANDS[args.command](args)
    except M2EError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR


def entry() -> None:
    """The ``m2e-train`` console script: huge pages on (before torch loads), then :func:`main`."""
    from m2e_core.runtime import use_huge_pages

    use_huge_pages()
    raise SystemExit(main())

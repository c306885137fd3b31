"""Command line of m2e training: m2e-train {synth,datasets,extract,train,evaluate}.

The same commands run as "python -m training ..." (torchrun needs that form: "-m training").
Output: one progress bar per stage on a terminal (extraction, each teacher, the student), a
summary line per stage and every few epochs on stderr, the report table on stdout.

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

#: The name of the console script; ``python -m training`` passes its own.
PROG = "m2e-train"
DESCRIPTION = """Train m2e's emotion heads: synthetic data, feature extraction (MERT embeddings,
chords, key) into a cache, one teacher per dataset, the multitask student distilled from
them, and evaluation."""
EPILOG = """examples:
  m2e-train train --config smoke --workdir /tmp/m2e-smoke      the smoke run: synthetic data, CPU, minutes
  m2e-train synth --out /tmp/synth                             a synthetic dataset only
  m2e-train datasets --config student_all --workdir /data/m2e  split sizes of the four datasets
  torchrun --nproc_per_node=4 -m training extract --config student_all --workdir /data/m2e
  m2e-train train --config jamendo --workdir /data/m2e         one teacher
  m2e-train train --config student_all --workdir /data/m2e     the student
  m2e-train evaluate --config student_all --workdir /data/m2e \\
      --checkpoint /data/m2e/runs/student-all/student.safetensors --out /data/m2e/runs/student-all/eval

configs:
  --config takes a YAML file, or the name of a config shipped with m2e when no such file
  exists: {packaged}.
  Relative paths inside a config (cache_dir, output_dir, synthetic.out, manifests, split files,
  tables, annotations, audio directories, teachers, a local features.encoder directory) are
  resolved against --workdir (default: the current directory), not against the folder of the
  config file; ~ and ${{VAR}} are expanded first, absolute paths are kept.

reproducibility:
  The same config and seed on the same machine give bit-identical checkpoints and metrics.
  Another machine (CPU instruction set, thread count, GPU, library versions) can give other
  figures: float rounding differs and grows over the epochs.

exit codes: 0 success, 1 error (one line on stderr), 2 extraction finished with failed tracks.
"""


class _ConsoleHandler(logging.Handler):
    """Log lines on stderr, written above any progress bar so the bar is not torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's own contract: a failing handler reports, never raises
            self.handleError(record)


_HANDLER = _ConsoleHandler()
_HANDLER.setFormatter(logging.Formatter("%(message)s"))


def _epilog() -> str:
    try:
        from .config import packaged_configs

        names = ", ".join(packaged_configs()) or "none"
    except (ImportError, OSError):
        names = "none found"
    return EPILOG.format(packaged=names)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or summary lines: only warnings, errors and the final report")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write the synthetic sanity dataset",
                                description="Write a synthetic dataset whose labels follow from the audio.")
    synth.add_argument("--out", required=True, help="directory for audio/, manifest.csv and truth.json")
    synth.add_argument("--tracks", type=int, default=120, help="number of clips (default: 120)")
    synth.add_argument("--seconds", type=float, default=4.5, help="length of every clip (default: 4.5)")
    synth.add_argument("--seed", type=int, default=0, help="everything follows from it (default: 0)")
    synth.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    for name, text in (("datasets", "print the split sizes of the config's datasets"),
                       ("extract", "extract missing features into the cache (torchrun-aware)"),
                       ("train", "train the teachers and/or the student, print the report"),
                       ("evaluate", "evaluate a checkpoint on the config's datasets")):
        command = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument("--config", required=True,
                             help="a YAML run config, or the name of a packaged one (smoke, jamendo, ...)")
        command.add_argument("--workdir", default=None,
                             help="base of the config's relative paths (default: the current directory)")
        if name == "train":
            command.add_argument("--stage", choices=("teachers", "student", "all"), default=None,
                                 help="override the config's stages")
            command.add_argument("--log-every", type=int, default=None, metavar="N",
                                 help="a summary line every N epochs besides the first, last and best "
                                      "(default: the config's training.log_every, 10; 0: only those)")
        if name == "evaluate":
            command.add_argument("--checkpoint", required=True, help="a .safetensors heads checkpoint")
            command.add_argument("--split", choices=("train", "validation", "test"), action="append",
                                 help="split(s) to evaluate (default: test)")
            command.add_argument("--out", default=None, help="directory for evaluation.csv and evaluation.json")
        if name == "extract":
            command.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _synth(args: argparse.Namespace) -> int:
    from .synthetic import generate

    manifest = generate(args.out, tracks=args.tracks, seconds=args.seconds, seed=args.seed,
                        progress=not args.quiet)
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
                 seed=config.synthetic.seed, progress=not (args.no_progress or args.quiet))
    context = DistributedContext.from_environment()
    try:
        datasets = [spec.load() for spec in config.datasets]
        report = extract_features(datasets, config.features, FeatureCache(config.cache_dir), context=context,
                                  progress=not (args.no_progress or args.quiet))
    finally:
        context.shutdown()
    prefix = f"rank {context.rank}/{context.world_size}: " if context.distributed else ""
    print(f"{prefix}{report.summary()}; {report.seconds:.1f} s ({report.tracks_per_second:.2f} tracks/s, "
          f"{report.audio_seconds / max(report.seconds, 1e-9):.1f} s of audio per s)")
    for track, error in report.failed[:20]:
        print(f"  failed {track}: {error}", file=sys.stderr)
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import load_config
    from .solver import run

    config = load_config(args.config, workdir=args.workdir)
    if args.log_every is not None:
        if args.log_every < 0:
            from m2e_core.errors import ConfigError

            raise ConfigError(f"--log-every must be >= 0, got {args.log_every}")
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, log_every=args.log_every))
    stages = None if args.stage is None else (("teachers", "student") if args.stage == "all" else (args.stage,))
    summary = run(config, stages=stages, progress=not args.quiet)
    print(summary.table)
    print(f"report: {summary.report_csv} {summary.report_json}")
    for model in summary.models:
        print(f"checkpoint ({model.label}): {model.checkpoint}")
    if config.features.encoder == "tiny" and summary.models:
        encoder = config.cache_dir / "encoders" / "tiny-seed0"
        print(f"analyze with: m2e analyze <audio> --encoder {encoder} --checkpoint {summary.models[-1].checkpoint}")
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


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run one command; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    logger = logging.getLogger("training")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)
    logger.propagate = False
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
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

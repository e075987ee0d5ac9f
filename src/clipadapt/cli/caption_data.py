"""`clipadapt caption-data`: convert the original Flickr8k-Expert / Flickr8k-CF files into a `captions` judgments CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.cli._outputs import FILE, output_option

COMMAND = "caption-data"
HELP = "convert Flickr8k-Expert / Flickr8k-CF annotation files into the `clipadapt captions --judgments` CSV"
EXAMPLES = """
clipadapt caption-data flickr8k-expert --annotations ExpertAnnotations.txt --tokens Flickr8k.token.txt --out flickr8k_expert.csv
clipadapt caption-data flickr8k-cf --annotations CrowdFlowerAnnotations.txt --tokens Flickr8k.token.txt --out flickr8k_cf.csv
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["flickr8k-expert", "flickr8k-cf"], help="which benchmark's files")
    parser.add_argument("--annotations", type=Path, required=True,
                        help="ExpertAnnotations.txt (flickr8k-expert) or CrowdFlowerAnnotations.txt (flickr8k-cf)")
    parser.add_argument("--tokens", type=Path, required=True, help="Flickr8k.token.txt (the captions by id)")
    output_option(parser.add_argument("--out", type=Path, required=True, help="judgments CSV to write"), FILE)


def run(args: argparse.Namespace) -> int:
    from clipadapt.data.caption_judgments import read_flickr8k_cf, read_flickr8k_expert, write_judgments_csv

    read = read_flickr8k_expert if args.format == "flickr8k-expert" else read_flickr8k_cf
    rows = read(args.annotations, args.tokens)
    write_judgments_csv(rows, args.out)
    print(f"wrote {args.out}: {len(rows)} judgments of {len({(r['image'], r['caption']) for r in rows})} "
          f"(image, caption) pairs; score with: clipadapt captions --judgments {args.out} --image-root DIR --model M")
    return 0

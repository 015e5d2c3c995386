"""``clothsim search``: the top-k catalogue items for one or more photos, a text, or a photo and a text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clothsim.defaults import DEFAULT_DEVICE, DEFAULT_K, DEFAULT_TEXT_WEIGHT
from clothsim.cli.options import add_backend_options_flag, add_runtime_option, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "search", help="find the most similar catalogue items for a photo",
        description="Rank the indexed catalogue by cosine similarity to each query photo, to a text (indexes "
                    "built with an encoder that has a text tower, e.g. open_clip:...), or to a photo and a text "
                    "together.",
        epilog="examples:\n  clothsim search photo.jpg --index catalog/ -k 5\n"
               "  clothsim search a.jpg b.jpg --index catalog/ --json\n"
               "  clothsim search photo.jpg --index catalog/ --category dress --grid result.png\n"
               "  clothsim search --text \"red floral summer dress\" --index clip-catalog/\n"
               "  clothsim search photo.jpg --text red --text-weight 0.3 --index clip-catalog/   # like this, but red",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="query image file(s); none with --text alone")
    parser.add_argument("--text", default=None, metavar="TEXT",
                        help="search by this text (with photos: each photo mixed with it)")
    parser.add_argument("--text-weight", type=_weight, default=DEFAULT_TEXT_WEIGHT, metavar="W",
                        help=f"with photos and --text: how much the text counts, 0..1 (default {DEFAULT_TEXT_WEIGHT})")
    parser.add_argument("--index", required=True, help="index folder made by `clothsim index`")
    parser.add_argument("-k", type=positive_int, default=DEFAULT_K, help=f"results per query (default {DEFAULT_K})")
    parser.add_argument("--category", action="append", default=None,
                        help="only results of this category (repeatable)")
    parser.add_argument("--collapse", action="store_true",
                        help="one result per group of near-duplicates, with the group's size (see `clothsim "
                             "duplicates`)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--grid", metavar="PNG", help="also draw the query beside its results")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="weights file, if it moved since the index was built")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"torch device (default {DEFAULT_DEVICE})")
    add_runtime_option(parser)
    add_backend_options_flag(parser, "a search-time option of the index's backend (repeatable), e.g. "
                                     "efSearch=256, nprobe=64 (build options are fixed at `clothsim index`)")
    return parser


def check_query_files(images: list[str]) -> None:
    """Fail before any model loads when a query photo is not there or is no file (URIs are left to the
    reader): the same messages as the reader's, sooner."""
    import os
    import stat

    for image in images:
        if "://" in image:
            continue
        try:
            mode = os.stat(image).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"query image {image} does not exist") from None
        except OSError:
            continue  # unreadable in another way: the reader says how
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"query image {image} is a folder, not a file")
        if not stat.S_ISREG(mode):
            from clothsim.images import ImageDecodeError, special_file_kind

            raise ImageDecodeError(image, f"{special_file_kind(mode)}, not an image file")


def _weight(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from clothsim.errors import UsageError

    if not args.images and args.text is None:
        raise UsageError("give query photos, --text, or both")
    if args.text is not None and not args.text.strip():
        raise UsageError("--text must not be empty")
    if args.grid and not args.images:
        raise UsageError("--grid draws the query photo beside its results; a text query has none")
    check_query_files(args.images)
    if not Path(args.index).is_dir():
        raise FileNotFoundError(f"index folder {args.index} does not exist")
    from clothsim.index.base import parse_option_pairs
    from clothsim.similarity_index import SimilarityIndex

    index = SimilarityIndex.open(args.index, weights=args.weights, device=args.device, runtime=args.runtime,
                                 threads=args.threads, backend_options=parse_option_pairs(args.backend_option))
    collapse = {"collapse": True} if args.collapse else {}
    if args.text is None:
        results = [(image, index.search(image, k=args.k, category=args.category, **collapse))
                   for image in args.images]
    elif not args.images:
        results = [(None, index.search_text(args.text, k=args.k, category=args.category, **collapse))]
    else:
        results = [(image, index.search_text(args.text, k=args.k, category=args.category, image=image,
                                             text_weight=args.text_weight, **collapse)) for image in args.images]
    if args.json:
        text = {"text": args.text} if args.text is not None else {}
        print(json.dumps([{"query": str(image) if image is not None else None, **text,
                           "results": [h.to_dict() for h in hits]} for image, hits in results], indent=2))
    else:
        for image, hits in results:
            shown = " + ".join(part for part in (str(image) if image else None,
                                                 repr(args.text) if args.text is not None else None) if part)
            print(f"query: {shown}")
            copies = f"  {'copies':>6}" if args.collapse else ""
            print(f"{'rank':>4}  {'score':>6}{copies}  {'category':<16} path")
            for hit in hits:
                size = f"  {hit.group_size:>6}" if args.collapse else ""
                print(f"{hit.rank:>4}  {hit.score:6.3f}{size}  {hit.record.category or '-':<16} {hit.record.path}")
    if args.grid:
        from clothsim.viz.grid import QueryResult, save_result_grid

        save_result_grid([QueryResult(image, hits) for image, hits in results], args.grid)
        if not args.json:
            print(f"grid written to {args.grid}")
    return 0

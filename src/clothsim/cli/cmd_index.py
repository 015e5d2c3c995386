"""``clothsim index``: encode a catalogue into an on-disk searchable index."""

from __future__ import annotations

import argparse

from clothsim.defaults import DEFAULT_CHECKPOINT_EVERY, DEFAULT_LABEL_PROMPT
from clothsim.cli.options import (
    add_backend_option,
    add_data_options,
    add_engine_options,
    add_encoder_options,
    add_extraction_options,
    add_precision_options,
    positive_int,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "index", help="build a searchable index from a catalogue",
        description="Encode every image of a catalogue and write an index folder (vectors, metadata, backend) to --out. "
                    "Run the same command again after an interruption to resume.",
        epilog="example:\n  clothsim index ../shared/data/clothing-dataset-small/train --out index/\n"
               "  clothsim index DeepFashion/ --format deepfashion-category --split train --out df-index/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="catalogue: a folder per category, a CSV file, or a DeepFashion root")
    parser.add_argument("--out", required=True, help="index folder to write")
    add_data_options(parser)
    parser.add_argument("--split", action="append", default=None,
                        help="only images of this split (repeatable), e.g. --split train")
    parser.add_argument("--min-count", type=int, default=0,
                        help="drop categories with fewer images than this (the study used 100)")
    add_encoder_options(parser)
    add_precision_options(parser)
    add_backend_option(parser)
    add_engine_options(parser)
    add_extraction_options(parser)
    parser.add_argument("--float16", action="store_true", help="store vectors as float16 (half the disk)")
    parser.add_argument("--no-bbox", action="store_true", help="ignore bounding boxes in the annotations")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild the index from scratch: every image encoded again, removed items purged "
                             "(built beside it, swapped in when done); needed for an index made with another "
                             "setup or with a damaged manifest")
    parser.add_argument("--reencode", action="store_true",
                        help="encode every image again in place, also files whose size and modification time "
                             "did not change (e.g. a photo replaced by a same-size copy)")
    group = parser.add_argument_group("labels without labelling (encoders with a text tower, e.g. open_clip:...)")
    group.add_argument("--label-with", metavar="FILE|LIST", default=None,
                       help="give each item its best label from this list (a file, one label a line, or "
                            "'dress,shirt,shoes'), through the text tower, with its score")
    group.add_argument("--label-as", metavar="FIELD", default="category",
                       help="store the label as the category of items without one (default) or as this "
                            "attribute, e.g. colour (stored as colour=red)")
    group.add_argument("--label-prompt", metavar="TEMPLATE", default=DEFAULT_LABEL_PROMPT,
                       help=f"the text each label is encoded as; {{}} is the label (default {DEFAULT_LABEL_PROMPT!r})")
    parser.add_argument("--checkpoint-every", type=positive_int, default=DEFAULT_CHECKPOINT_EVERY, metavar="N",
                        help="commit the work every N images, so an interruption loses at most that many "
                             f"(default {DEFAULT_CHECKPOINT_EVERY}, about a minute on 2 CPU cores)")
    return parser


def load_records(args: argparse.Namespace):
    from clothsim.data import filter_min_count, read_catalog
    from clothsim.errors import DataError

    records = read_catalog(args.data, format=args.format)
    if args.split:
        records = [r for r in records if r.split in set(args.split)]
        if not records:
            raise DataError(f"{args.data}: no images in split(s) {args.split}")
    if args.min_count:
        result = filter_min_count(records, args.min_count)
        records = result.records
    return records


def run(args: argparse.Namespace) -> int:
    from clothsim.features.writer_lock import hold_writer

    # One writer per index folder for the whole command (encoding, the --overwrite swap and the backend):
    # a second `clothsim index` into the same folder is refused here, before any work.
    with hold_writer(args.out):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from clothsim.index.base import parse_option_pairs
    from clothsim.similarity_index import SimilarityIndex

    labels = None
    if args.label_with is not None:
        from clothsim.zero_shot import LabelList, read_label_list

        labels = LabelList(tuple(read_label_list(args.label_with)), field=args.label_as, prompt=args.label_prompt)
    records = load_records(args)
    index, report = SimilarityIndex.build(
        records, args.out, encoder=args.encoder, weights=args.weights, device=args.device,
        runtime=args.runtime, threads=args.threads, precision=args.precision,
        calibration_images=args.calibration_images, calibration_method=args.calibration_method,
        backend=args.backend, backend_options=parse_option_pairs(args.backend_option), engine=args.engine,
        engine_options={"ray_address": args.ray_address, "actors": args.actors} if args.engine == "ray" else None,
        batch_size=args.batch_size, num_workers=args.workers, dtype="float16" if args.float16 else "float32",
        use_bbox=not args.no_bbox, overwrite=args.overwrite, rebuild=args.overwrite, reencode=args.reencode,
        progress=not args.quiet, checkpoint_every=args.checkpoint_every, labels=labels,
    )
    if report.reused:
        print(f"{args.out} is already up to date: {len(index)} images, encoder {index.encoder.name}")
    else:
        done = (f"{report.n_new} encoded now at {report.images_per_second:.1f} images/s" if report.n_new
                else "nothing needed encoding")
        print(f"indexed {report.n_encoded} images with {index.encoder.name} ({index.encoder.dim}-d) "
              f"into {args.out}; {done}")
        print(f"{'rebuilt' if report.rebuilt else 'synced'}: {report.summary()}")
    if not (report.reused or report.first_build or report.rebuilt) and report.new_ids_from is not None:
        _report_new_duplicates(index, report.new_ids_from)
    if index.label_report is not None:
        print(index.label_report.summary())
    for problem in report.repaired:
        print(f"repaired {printable(problem)}")
    for failure in report.failures:
        path, reason = failure["path"], failure["reason"]
        if reason.startswith(f"{path}: "):  # a decoder's message names the file already
            reason = reason[len(path) + 2:]
        print(f"skipped {printable(path)}: {printable(reason)}")
    if report.failures:
        print(f"{report.n_failed} catalogue entr{'y' if report.n_failed == 1 else 'ies'} could not be encoded "
              "and were skipped")
    return 0


def _report_new_duplicates(index, first_new_id: int) -> None:
    """Say which of the items a sync added are near-duplicates of items already in the index."""
    from clothsim.duplicates.collapse import copies_among
    from clothsim.duplicates.finder import recorded_threshold

    ids = index.store.live_ids()
    new = ids[ids >= first_new_id]
    if new.size == 0:
        return
    threshold, _ = recorded_threshold(index.store)
    found = copies_among(index, new.tolist(), threshold)
    if not found:
        return
    print(f"{len(found)} of the {new.size} items this sync added are near-duplicates of indexed items "
          f"(cosine >= {threshold:.2f}):")
    for item, hits in list(found.items())[:10]:
        record = index.store.get(item).record
        print(f"    {printable(record.path)} ~ {printable(hits[0].record.path)} ({hits[0].score:.3f})"
              + (f" and {len(hits) - 1} more" if len(hits) > 1 else ""))
    if len(found) > 10:
        print(f"    ... {len(found) - 10} more (clothsim duplicates --index {index.store.root})")


def printable(text: str) -> str:
    """``text`` as a terminal can show it: bytes of a file name that are not UTF-8 as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

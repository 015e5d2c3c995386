"""``clothsim similarity``: how similar a trained Siamese model finds two photos."""

from __future__ import annotations

import argparse
import json

from clothsim.defaults import DEFAULT_DEVICE


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "similarity", help="similarity score of two photos under a trained Siamese model",
        description="Print the similarity in [0, 1] (1 - d^2/4, i.e. (1 + cosine)/2 of the unit embeddings) "
                    "and the Euclidean distance d of two images' Siamese embeddings, and whether the pair "
                    "falls under the model's decision threshold.",
        epilog="example:\n  clothsim similarity a.jpg b.jpg --model model/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_a", help="first image file")
    parser.add_argument("image_b", help="second image file")
    parser.add_argument("--model", required=True, help="model folder made by `clothsim train-siamese`")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="base CNN weights file, if it moved since training")
    parser.add_argument("--device", default=DEFAULT_DEVICE)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from clothsim.images import load_image
    from clothsim.training.distance import similarity_from_distance
    from clothsim.training.siamese_encoder import load_siamese_encoder

    encoder = load_siamese_encoder(args.model, weights=args.weights, device=args.device)
    similarity, distance = encoder.pair_similarity(load_image(args.image_a), load_image(args.image_b))
    threshold = encoder.threshold
    same = distance < threshold
    if args.json:
        print(json.dumps({"image_a": args.image_a, "image_b": args.image_b, "similarity": similarity,
                          "distance": distance, "threshold_distance": threshold,
                          "threshold_similarity": float(similarity_from_distance(threshold)), "similar": bool(same)},
                         indent=2))
    else:
        print(f"similarity {similarity:.4f}  (distance {distance:.4f}; the model calls pairs similar below "
              f"distance {threshold:.4f}, i.e. above similarity {similarity_from_distance(threshold):.4f}: "
              f"{'similar' if same else 'not similar'})")
    return 0

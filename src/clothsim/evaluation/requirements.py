"""What every requested encoder needs, checked before anything is encoded.

A comparison encodes the catalogue once per encoder, which takes minutes to hours; a requirement that
only fails at the fifth encoder (an ensemble to fit on a catalogue without a train split, a misspelt
name, a weights file that is not there) must fail at once, not after the first four.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import Encoder
from clothsim.encoders.factory import create_encoder
from clothsim.errors import DataError, UsageError, WeightsUnavailableError

logger = logging.getLogger(__name__)


@dataclass
class Checked:
    """The outcome of the checks: encoders already built (reused by the run) and those to skip."""

    encoders: dict[str, Encoder] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _splits(records: Sequence[CatalogRecord]) -> list[str]:
    return sorted({r.split for r in records if r.split})


def check_encoders(
    records: Sequence[CatalogRecord],
    encoders: Sequence[str],
    part_weights: dict[str, str],
    device: str = "cpu",
) -> Checked:
    """Check every encoder of a comparison; build the plain ones once (the run reuses them).

    * a plain name must be registered and its weights loadable;
    * ``ensemble:FOLDER`` must be a fitted ensemble whose parts load;
    * ``ensemble:a+b`` needs two or more different registered parts and a train split to fit on;
    * ``--weights NAME=PATH`` must name an encoder or part that was asked for.

    Weights that cannot be had make that encoder *skipped* (reported with the reason, as before);
    everything else is an error raised here, before any image is encoded.

    Raises:
        UsageError: unknown encoder, malformed ensemble spec, weights for an encoder not asked for.
        DataError: an ensemble to fit on a catalogue without a train split.
    """
    checked = Checked()
    splits = _splits(records)
    wanted_parts: set[str] = set()
    for name in encoders:
        if name.startswith("ensemble:"):
            _check_ensemble(name, splits, part_weights, device, checked, wanted_parts)
            continue
        wanted_parts.add(name)
        try:
            checked.encoders[name] = create_encoder(name, weights=part_weights.get(name), device=device)
        except WeightsUnavailableError as exc:
            checked.skipped[name] = str(exc)
    unused = sorted(set(part_weights) - wanted_parts)
    if unused:
        raise UsageError(f"--weights names {', '.join(unused)}, which is neither an encoder nor an ensemble part "
                         f"asked for ({', '.join(encoders)})")
    return checked


def _check_ensemble(name: str, splits: list[str], part_weights: dict[str, str], device: str, checked: Checked,
                    wanted_parts: set[str]) -> None:
    from clothsim.ensemble import EnsembleModel

    spec = name.partition(":")[2]
    if EnsembleModel.is_model_dir(spec):
        model = EnsembleModel.load(Path(spec))
        parts = [p.name for p in model.parts]
        sources = {p.name: p.weights_source for p in model.parts}
    elif "+" in spec:
        parts = spec.split("+")
        if len(parts) < 2 or len(set(parts)) != len(parts) or not all(parts):
            raise UsageError(f"{name}: an ensemble needs two or more different parts, e.g. "
                             "ensemble:vgg16+efficientnet_lite0")
        if "train" not in splits:
            have = ", ".join(splits) if splits else "none: every image is unsplit"
            raise DataError(f"{name}: fitting an ensemble needs a train split, and this catalogue has "
                            f"{have}; give the catalogue train/validation/test folders, or fit one elsewhere "
                            "with `clothsim fit-ensemble` and pass ensemble:FOLDER")
        sources = {}
    else:
        raise UsageError(f"{name}: {spec} is neither a fitted ensemble folder nor a parts list like "
                         "ensemble:vgg16+efficientnet_lite0")
    wanted_parts.update(parts)
    for part in parts:
        weights: Any = part_weights.get(part, sources.get(part))
        try:
            create_encoder(part, weights=weights, device=device)  # loads the weights; dropped again
        except WeightsUnavailableError as exc:
            checked.skipped[name] = f"part {part}: {exc}"
            return

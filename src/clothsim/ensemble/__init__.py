"""Weighted ensembles of encoders: column selection, weights fitted on train/validation, an encoder.

Importing this package registers the ``ensemble:<folder>`` encoder family.
"""

from clothsim.ensemble.combine import combine, select_columns, weight_grid
from clothsim.ensemble.encoder import (
    EnsembleEncoder,
    EnsembleTransform,
    load_ensemble_encoder,
)
from clothsim.ensemble.fit import fit_ensemble, search_weights
from clothsim.ensemble.model import EnsembleModel, PartSpec
from clothsim.ensemble.pipeline import build_store_from_parts, fit_from_catalog

__all__ = [
    "EnsembleEncoder",
    "EnsembleModel",
    "EnsembleTransform",
    "PartSpec",
    "build_store_from_parts",
    "combine",
    "fit_ensemble",
    "fit_from_catalog",
    "load_ensemble_encoder",
    "search_weights",
    "select_columns",
    "weight_grid",
]

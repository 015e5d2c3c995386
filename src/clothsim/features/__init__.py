"""Feature extraction into, and reading from, on-disk feature stores."""

from clothsim.features.extract import ExtractionReport, extract_features
from clothsim.features.store import FeatureStore, StoredItem

__all__ = ["ExtractionReport", "FeatureStore", "StoredItem", "extract_features"]

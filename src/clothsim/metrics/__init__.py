"""Retrieval metrics: rank a gallery by cosine similarity and score the ranking.

Two modes: a query set against a gallery set, and leave-one-out within one set (a query never
retrieves itself). Metrics that take a ranked label matrix (one row per query, best neighbour first)
are pure functions of it, so they also score rankings made elsewhere.
"""

from clothsim.metrics.average_precision import average_precision_at_k, mean_average_precision_at_k
from clothsim.metrics.confusion import confusion_top1
from clothsim.metrics.precision import hit_rate_at_k, hits_at_k, precision_at_k, precision_at_k_per_query
from clothsim.metrics.ranking import rank
from clothsim.metrics.report import RetrievalReport, evaluate_retrieval

__all__ = [
    "RetrievalReport",
    "average_precision_at_k",
    "confusion_top1",
    "evaluate_retrieval",
    "hit_rate_at_k",
    "hits_at_k",
    "mean_average_precision_at_k",
    "precision_at_k",
    "precision_at_k_per_query",
    "rank",
]

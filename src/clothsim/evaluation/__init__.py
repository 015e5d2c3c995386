"""Side-by-side encoder comparison on one catalogue: numbers, charts and a report folder."""

from clothsim.evaluation.report import render_html, render_markdown, write_report
from clothsim.evaluation.results import Comparison, EncoderResult, SkippedEncoder
from clothsim.evaluation.runner import (
    DEFAULT_ENCODERS,
    choose_protocol,
    compare_encoders,
)

__all__ = [
    "DEFAULT_ENCODERS",
    "Comparison",
    "EncoderResult",
    "SkippedEncoder",
    "choose_protocol",
    "compare_encoders",
    "render_html",
    "render_markdown",
    "write_report",
]

"""clothsim: visual clothing similarity (top-k similar garments from pretrained CNN features)."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

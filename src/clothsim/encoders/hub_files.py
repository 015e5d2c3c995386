"""Files of models published on the Hugging Face hub: found in a cache, downloaded once, checked by hash.

A hub file (``timm/resnet18.a1_in1k`` / ``model.safetensors``) is looked for first in clothsim's own
folder for files placed by hand (``$CLOTHSIM_CACHE/hub/<repo>/<file>``: what a machine without internet
access uses), then fetched through ``huggingface_hub`` into its usual cache (``$HF_HOME``), where it is
reused offline. The hub names a large file by its SHA-256 (its cache blob carries that name), and such a
file is checked against it. When no copy can be had, the error says which address to download and where
to put the file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from clothsim.errors import WeightsUnavailableError
from clothsim.fileio import file_sha256
from clothsim.optional import require

logger = logging.getLogger(__name__)

HUB_ADDRESS = "https://huggingface.co"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

__all__ = ["HUB_ADDRESS", "hub_file", "manual_path"]


def manual_path(repo_id: str, filename: str) -> Path:
    """Where a hub file placed by hand is looked for: ``$CLOTHSIM_CACHE/hub/<repo>/<file>``."""
    from clothsim.user_dirs import default_cache_dir

    return default_cache_dir() / "hub" / repo_id / filename


def file_address(repo_id: str, filename: str, revision: str = "main") -> str:
    """The download address of a hub file."""
    return f"{HUB_ADDRESS}/{repo_id}/resolve/{revision}/{filename}"


def hub_file(repo_id: str, filename: str, *, what: str, revision: str | None = None, hint: str = "") -> Path:
    """A local copy of ``filename`` of the hub repository ``repo_id``.

    Args:
        repo_id: ``org/name`` on the hub.
        filename: The file in that repository.
        what: What needs it, for messages (e.g. ``"timm:resnet18 weights"``).
        revision: A branch, tag or commit (default: the main branch).
        hint: Further advice appended to the error (e.g. the ``--weights PATH`` alternative).

    Raises:
        WeightsUnavailableError: no copy here and none could be downloaded; the message gives the address
            to download and the path to put the file at.
        DataError: a downloaded file is not the one the hub names by its SHA-256.
    """
    manual = manual_path(repo_id, filename)
    if manual.is_file():
        logger.debug("%s: using %s", what, manual)
        return manual
    hub = require("huggingface_hub", extra="hub", feature=f"downloading {what} from the Hugging Face hub")
    from huggingface_hub.errors import HfHubHTTPError

    try:
        path = Path(hub.hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except (OSError, ValueError, HfHubHTTPError) as exc:
        # OSError: no connection and no cached copy, a missing file (EntryNotFound is one), a full disk;
        # ValueError: a malformed repository id; HTTP errors: an unknown or private repository.
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise WeightsUnavailableError(
            f"{what}: {filename} of {repo_id} is not cached here and could not be downloaded ({reason}). "
            f"Download {file_address(repo_id, filename, revision or 'main')} on a machine with internet access "
            f"and put it at {manual}{hint}") from exc
    _check_blob(path, what)
    return path


def _check_blob(path: Path, what: str) -> None:
    """A cached hub file whose blob is named by a SHA-256 (every large file on the hub) must have it."""
    from clothsim.errors import DataError

    blob = Path(os.path.realpath(path))
    if _SHA256.match(blob.name) and file_sha256(blob) != blob.name:
        raise DataError(f"{what}: {path} is damaged (its SHA-256 is not {blob.name[:16]}..., the hub's); delete "
                        f"{blob} and run again to download it anew")

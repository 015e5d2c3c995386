"""Where an encoder's weights come from: official (cached download), random, or a local file.

Every source ends as a plain state dict plus a ``weights_id`` that is stamped on feature stores, so
vectors made with other weights are detected as stale:

* official torchvision weights -> the weights tag, e.g. ``"VGG16_Weights.IMAGENET1K_V1"``;
* ``"random"`` -> ``"random"`` (seeded, so the same every time);
* a local file -> the first 16 hex digits of its SHA-256.

Downloads go to the torch.hub cache (``$TORCH_HOME/hub/checkpoints``), the same place torchvision
uses, so a file fetched by either is found by both.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from clothsim.errors import DataError, WeightsUnavailableError

logger = logging.getLogger(__name__)

RANDOM = "random"
RANDOM_SEED = 0
# Seconds a blocking socket operation may take before a download is given up; kept small enough that
# a machine without network fails at once instead of hanging on a firewall that drops packets.
DOWNLOAD_TIMEOUT_S = 30.0
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
_CHUNK = 1 << 20

StateDict = dict[str, torch.Tensor]


def file_digest(path: str | Path, length: int = 16) -> str:
    """First ``length`` hex digits of the SHA-256 of a file."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()[:length]


def hub_cache_path(url: str) -> Path:
    """Where torch.hub keeps (or would keep) the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def read_state_dict(path: str | Path) -> StateDict:
    """Load a state-dict file safely (``weights_only=True``) onto the CPU.

    Accepts a bare state dict or a checkpoint that wraps one under ``"state_dict"`` or ``"model"``;
    a ``module.`` prefix (left by ``DataParallel``) is removed.

    Raises:
        WeightsUnavailableError: the file does not exist.
        ValueError: the file is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        # What torch raises for a non-torch file, a pickle with non-tensor objects, an empty file.
        raise DataError(f"{path}: not a readable torch state-dict file ({exc})") from exc
    if isinstance(loaded, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise DataError(f"{path}: expected a non-empty state dict, got {type(loaded).__name__}")
    state: StateDict = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{path}: entry {key!r} is not a tensor; expected a state dict")
        state[key.removeprefix("module.")] = value
    return state


def download_to_cache(url: str, *, hint: str = "") -> Path:
    """Return the hub-cache copy of ``url``, downloading it first if it is not there.

    The SHA-256 prefix in the file name (torchvision's convention, e.g. ``vgg16-397923af.pth``) is
    checked after download; the file is written under a temporary name and renamed, so an interrupted
    download never leaves a truncated file that would later be taken for the real one.

    Args:
        url: Download address.
        hint: Extra advice appended to the error message (e.g. the ``--weights PATH`` alternative).

    Raises:
        WeightsUnavailableError: not cached and the download failed; says what to put where.
    """
    target = hub_cache_path(url)
    if target.is_file():
        logger.debug("using cached weights %s", target)
        return target
    logger.info("downloading %s to %s", url, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    sha = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                sha.update(chunk)
    except OSError as exc:  # URLError, HTTPError, socket timeouts and DNS failures are all OSError
        os.unlink(tmp_name)
        raise WeightsUnavailableError(
            f"could not download pretrained weights from {url} ({exc}). Download that file on a "
            f"machine with internet access and put it at {target} (the torch.hub cache; set "
            f"TORCH_HOME to move it){hint}"
        ) from exc
    expected = _HASH_IN_NAME.search(target.name)
    if expected and not sha.hexdigest().startswith(expected.group(1)):
        os.unlink(tmp_name)
        raise WeightsUnavailableError(
            f"downloaded {url} but its SHA-256 {sha.hexdigest()[:16]} does not start with "
            f"{expected.group(1)}; try again"
        )
    os.replace(tmp_name, target)
    return target


def load_checked(
    model: nn.Module,
    state: StateDict,
    *,
    source: str,
    ignore_prefixes: Iterable[str] = (),
    trunk_prefix: str = "",
    assign: bool = False,
) -> None:
    """Load ``state`` into ``model``, requiring every non-classifier weight to be present.

    Args:
        model: The whole network (trunk and classifier).
        state: A state dict of the whole network or of its trunk only.
        source: Where ``state`` came from, for error messages (a file path or a weights tag).
        ignore_prefixes: Key prefixes of parts that embeddings do not use (classifiers); their keys are
            neither required nor loaded.
        trunk_prefix: If the trunk lives under a sub-module (``"features."`` for VGG), a state dict of
            that sub-module alone may omit the prefix.
        assign: Use the file's tensors as the parameters (``load_state_dict(assign=True)``), which is
            how a model built on the ``meta`` device gets its storage.

    Raises:
        ValueError: required keys are missing, unknown keys are present, or shapes differ; the message
            names ``source`` and the first offending keys.
    """
    ignore = tuple(ignore_prefixes)
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    if trunk_prefix and state and not any(k.startswith(trunk_prefix) for k in state):
        state = {trunk_prefix + k: v for k, v in state.items()}
    expected = model.state_dict()
    wanted = [k for k in expected if not (ignore and k.startswith(ignore))]
    # BatchNorm's step counter is absent from older checkpoints and does not affect inference.
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} of {len(wanted)} weights missing, first: {', '.join(missing[:5])}"
        )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ValueError(
            f"{source}: {len(unexpected)} keys this model does not have, first: {', '.join(unexpected[:5])}"
        )
    wrong_shape = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if wrong_shape:
        raise DataError(f"{source}: shape mismatch (file != model): {'; '.join(wrong_shape[:3])}")
    # Stored half precision (or doubles) would otherwise change the model's dtype under assign=True.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=assign)


def load_weights(
    weights: str | Path | None, official: Callable[[], tuple[Path, str]]
) -> tuple[StateDict | None, str, str]:
    """Turn a ``weights`` argument into a state dict.

    Args:
        weights: ``None`` (official), ``"random"``, or a path to a state-dict file.
        official: Returns the official weights' local file (downloading it if need be) and their id.

    Returns:
        ``(state, weights_id, source)``; ``state`` is ``None`` for random weights. ``source`` names the
        file for error messages.
    """
    if isinstance(weights, str) and weights == RANDOM:
        return None, RANDOM, RANDOM
    if weights is None:
        path, weights_id = official()
        return read_state_dict(path), weights_id, str(path)
    path = Path(weights).expanduser()
    state = read_state_dict(path)
    return state, file_digest(path), str(path)


def build_seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a randomly initialised model, the same every time, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def build_from_state(
    build: Callable[[], nn.Module],
    state: StateDict,
    *,
    source: str,
    ignore_prefixes: Iterable[str] = (),
    trunk_prefix: str = "",
) -> nn.Module:
    """Build a model on the ``meta`` device and give it the tensors of ``state``.

    Skips the random initialisation that loading would overwrite (seconds for VGG16's classifier).
    Parameters under ``ignore_prefixes`` stay on ``meta``: take the trunk, then
    :func:`materialize_leftovers`.
    """
    with torch.device("meta"):
        model = build()
    load_checked(
        model, state, source=source, ignore_prefixes=ignore_prefixes, trunk_prefix=trunk_prefix, assign=True
    )
    return model


def materialize_leftovers(module: nn.Module) -> list[str]:
    """Replace tensors still on ``meta`` (not in the loaded file) by zeros; return their names.

    Only tensors :func:`load_checked` did not require can be left: BatchNorm step counters and
    ignored classifier weights that a trunk keeps a reference to.
    """
    zeroed = []
    for mod_name, mod in module.named_modules():
        for kind in ("_parameters", "_buffers"):
            tensors = getattr(mod, kind)
            for name, tensor in tensors.items():
                if tensor is not None and tensor.is_meta:
                    zeros = torch.zeros(tensor.shape, dtype=tensor.dtype)
                    tensors[name] = (
                        nn.Parameter(zeros, requires_grad=False) if kind == "_parameters" else zeros
                    )
                    zeroed.append(f"{mod_name}.{name}" if mod_name else name)
    if zeroed:
        logger.debug("not in the weights file, set to zero: %s", ", ".join(zeroed))
    return zeroed

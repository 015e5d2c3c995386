"""Several server processes over one index: ``clothsim serve --workers N``.

One process runs Python (HTTP parsing, JSON, the framework) on one core at a time, whatever its threads do.
With ``--workers N`` uvicorn's supervisor starts N processes that accept on the same socket; each opens
the index itself, so the vectors, which the store memory-maps, are shared through the page cache rather
than copied (a FAISS graph is mapped too, until a worker writes to it). What each worker gets:

* its share of the cores (:func:`clothsim.web.compute.plan_threads`), of ``--max-connections`` and of
  ``--memory-budget-mb``;
* the same options, passed in the environment (:data:`CONFIG_ENV`, JSON) because uvicorn starts workers
  as fresh interpreters that import :func:`create_worker_app`; the API key stays in its own variable;
* its own warm-up before it accepts connections (uvicorn then never hands it a request it cannot answer
  fast); a warm-up that fails stops the whole server with the reason (:data:`STARTUP_ERROR_FILE`);
* states committed by another worker's REST writes, seen at its next request (:mod:`clothsim.web.snapshot`);
* metrics in prometheus-client's multiprocess mode, added up at every scrape (:mod:`clothsim.web.metrics`).

The parent checks every checksum of the index once, before any worker starts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clothsim.defaults import DEFAULT_HEADER_TIMEOUT_S

logger = logging.getLogger(__name__)

#: The environment variable carrying a worker's options from ``clothsim serve``.
CONFIG_ENV = "CLOTHSIM_SERVE_CONFIG"
#: Where (in the run's scratch folder) a worker that fails to start leaves the reason for the parent.
STARTUP_ERROR_FILE = "startup-error.txt"


@dataclass
class WorkerConfig:
    """Everything a worker needs to build the same application as the others (JSON in :data:`CONFIG_ENV`)."""

    index: str
    workers: int
    scratch_dir: str
    weights: str | None = None
    device: str = "cpu"
    runtime: str = "auto"
    threads: int | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    app_options: dict[str, Any] = field(default_factory=dict)
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    writes: dict[str, Any] | None = None
    access_log: bool = False
    log_level: int = logging.WARNING

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "WorkerConfig":
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise RuntimeError(f"{CONFIG_ENV} is not set: workers are started by `clothsim serve --workers N`")
        return cls(**json.loads(raw))


def create_worker_app() -> Any:
    """The application of one worker process (uvicorn's ``factory=True`` import target)."""
    config = WorkerConfig.from_env()
    configure_worker_logging(config.log_level, config.access_log)
    try:
        return _build(config)
    except BaseException as exc:
        message = str(exc) if str(exc) else type(exc).__name__
        Path(config.scratch_dir, STARTUP_ERROR_FILE).write_text(message, encoding="utf-8")
        logger.error("worker %d could not start: %s\n%s", os.getpid(), message, traceback.format_exc())
        raise


def _build(config: WorkerConfig) -> Any:
    from clothsim.similarity_index import SimilarityIndex
    from clothsim.web.app import create_app
    from clothsim.web.auth import ApiKey
    from clothsim.web.compute import plan_threads
    from clothsim.web.server import configure_protocol
    from clothsim.web.writes import WriteSettings

    configure_protocol(config.header_timeout_s)
    plan = plan_threads(workers=config.workers, encoder_threads=config.threads)
    index = SimilarityIndex.open(config.index, weights=config.weights, device=config.device, runtime=config.runtime,
                                 threads=plan.encoder_threads, backend_options=config.backend_options)
    writes = None
    if config.writes is not None:
        options = dict(config.writes)
        writes = WriteSettings(ApiKey.from_env(options.pop("key_env")), Path(options.pop("upload_dir")),
                               path_roots=tuple(Path(p) for p in options.pop("path_roots")),
                               url_prefixes=tuple(options.pop("url_prefixes")))
    # Checked in full by the parent; warmed here, before this worker accepts a connection.
    return create_app(index, verify_index=False, warm_in_background=False, threads=plan,
                      backend_options=config.backend_options, writes=writes, access_log=config.access_log,
                      **config.app_options)


def configure_worker_logging(level: int, access_log: bool) -> None:
    """The command's log format in a worker (a fresh interpreter started by the command, which is why it
    configures logging here), and the access log on stderr if asked."""
    logging.basicConfig(level=level, format=f"%(levelname)s %(name)s [{os.getpid()}]: %(message)s",
                        stream=sys.stderr)
    if access_log:
        from clothsim.web.metrics import send_access_log_to_stderr

        send_access_log_to_stderr()

"""``clothsim serve``: the search page and REST API over an index, served by uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shutil
import signal
import tempfile

from pathlib import Path

from clothsim.cli.options import add_backend_options_flag, add_runtime_option, positive_int
from clothsim.defaults import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_BODY_IDLE_TIMEOUT_S,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_DEVICE,
    DEFAULT_FOLLOW_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_K,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MEMORY_BUDGET_MB,
    DEFAULT_PORT,
    DEFAULT_SERVE_WORKERS,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
)
from clothsim.errors import ClothsimError, UsageError
from clothsim.web.auth import DEFAULT_KEY_ENV, MIN_KEY_CHARS  # the standard library only: no web extra needed

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'clothsim[web]'"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="serve a search page and REST API over an index",
        description="Load the index and its encoder once, then answer searches over HTTP: a page at / "
                    "(upload or drop a photo) and JSON at /api/search. Bound to 127.0.0.1 unless told "
                    "otherwise.",
        epilog="examples:\n  clothsim serve --index catalog/\n"
               "  clothsim serve --index catalog/ --port 8080 --max-upload-mb 10\n"
               "  curl -F image=@photo.jpg -F k=5 http://127.0.0.1:8000/api/search",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index folder made by `clothsim index`")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="weights file, if it moved since the index was built")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"torch device (default {DEFAULT_DEVICE})")
    add_runtime_option(parser)
    add_backend_options_flag(parser, "a search-time option of the index's backend (repeatable), e.g. "
                                     "efSearch=256, nprobe=64 (build options are fixed at `clothsim index`)")
    parser.add_argument("--max-upload-mb", type=float, default=float(DEFAULT_MAX_UPLOAD_MB),
                        help=f"largest accepted upload in MiB (default {DEFAULT_MAX_UPLOAD_MB})")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest accepted image in pixels (default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-k", type=positive_int, default=DEFAULT_MAX_K,
                        help=f"largest k a query may ask for (default {DEFAULT_MAX_K})")
    parser.add_argument("--memory-budget-mb", type=float, default=DEFAULT_MEMORY_BUDGET_MB,
                        help=f"most memory the server may hold, in MiB (default {DEFAULT_MEMORY_BUDGET_MB:g}, shared "
                             "by the workers); uploads wait for room to decode and get 503 with Retry-After when "
                             "there is none")
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S, metavar="S",
                        help=f"seconds a client may take to send its request headers (default {DEFAULT_HEADER_TIMEOUT_S:g})")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, metavar="S",
                        help=f"seconds a client may take to send a request body (default {DEFAULT_BODY_TIMEOUT_S:g}; "
                             f"{DEFAULT_BODY_IDLE_TIMEOUT_S:g} s without a byte also drops it)")
    parser.add_argument("--max-connections", type=positive_int, default=DEFAULT_MAX_CONNECTIONS,
                        help=f"open connections beyond which requests get 503 (default {DEFAULT_MAX_CONNECTIONS}, "
                             "shared by the workers)")
    parser.add_argument("--workers", type=positive_int, default=DEFAULT_SERVE_WORKERS,
                        help=f"server processes (default {DEFAULT_SERVE_WORKERS}); each opens the index (its "
                             "memory-mapped vectors are shared) and gets its share of the cores, connections and "
                             "memory budget")
    parser.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                        help=f"most uploads encoded together in one batch (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--batch-wait-ms", type=float, default=DEFAULT_BATCH_WAIT_S * 1000.0, metavar="MS",
                        help="how long a batch waits for uploads still being decoded once its first is ready "
                             f"(default {DEFAULT_BATCH_WAIT_S * 1000.0:g}; a lone upload never waits)")
    writes = parser.add_argument_group("writes over REST (off unless --writes)")
    writes.add_argument("--writes", action="store_true",
                        help="accept POST /api/items and DELETE /api/items/{id} from clients that send the API key "
                             "as 'Authorization: Bearer KEY'; the key is read from --api-key-env")
    writes.add_argument("--api-key-env", default=DEFAULT_KEY_ENV, metavar="NAME",
                        help=f"environment variable holding the API key (default {DEFAULT_KEY_ENV}; at least "
                             f"{MIN_KEY_CHARS} characters)")
    writes.add_argument("--upload-dir", default=None, metavar="DIR",
                        help="where photos added by upload or URL are kept (default: INDEX.uploads beside the index)")
    writes.add_argument("--write-path-root", action="append", default=[], metavar="DIR",
                        help="a folder whose files a write may name by path (repeatable; default none)")
    writes.add_argument("--write-url-prefix", action="append", default=[], metavar="URL",
                        help="a URL prefix a write may fetch a photo from, e.g. https://cdn.example.com/photos/ "
                             "(repeatable; default none)")
    parser.add_argument("--access-log", action="store_true",
                        help="write one JSON line per request to stderr (time, client, method, path, route, status, "
                             "duration_ms, response_bytes, pid)")
    parser.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S, metavar="S",
                        help="on SIGTERM or Ctrl-C, how long requests in flight may take to finish "
                             f"(default {DEFAULT_SHUTDOWN_TIMEOUT_S:g})")
    parser.add_argument("--follow-seconds", type=float, default=DEFAULT_FOLLOW_S, metavar="S",
                        help="how often to look for a new state of the index committed by `clothsim index` or "
                             f"another worker (default {DEFAULT_FOLLOW_S:g}; 0: serve the start-up state until restarted)")
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    try:
        import uvicorn

        from clothsim.web.app import create_app
        from clothsim.web.compute import plan_threads
        from clothsim.web.server import uvicorn_options
    except ImportError as exc:
        raise ClothsimError(f"the web server needs FastAPI and uvicorn ({exc}): {INSTALL_HINT}") from exc
    from clothsim.index.base import parse_option_pairs
    from clothsim.similarity_index import SimilarityIndex

    writes = _write_settings(args)
    backend_options = parse_option_pairs(args.backend_option)
    app_options = dict(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                       max_pixels=args.max_pixels, max_k=args.max_k,
                       memory_budget_mb=args.memory_budget_mb / args.workers, body_timeout_s=args.body_timeout,
                       body_idle_timeout_s=min(DEFAULT_BODY_IDLE_TIMEOUT_S, args.body_timeout), max_batch=args.max_batch,
                       batch_wait_s=args.batch_wait_ms / 1000.0, follow_s=args.follow_seconds)
    server_options = uvicorn_options(header_timeout_s=args.header_timeout, max_connections=args.max_connections,
                                     shutdown_timeout_s=args.shutdown_timeout, workers=args.workers)
    if args.workers > 1:
        return _run_workers(args, app_options, backend_options, server_options)

    index = SimilarityIndex.open(args.index, weights=args.weights, device=args.device, runtime=args.runtime,
                                 threads=args.threads, backend_options=backend_options)
    # Checked in full now (a damaged index never serves); loaded and warmed once the server listens, so
    # /health answers at once and /ready says when searches are answered.
    app = create_app(index, **app_options, backend_options=backend_options, warm_in_background=True, writes=writes,
                     access_log=args.access_log, threads=plan_threads(encoder_threads=args.threads))
    if args.access_log:
        from clothsim.web.metrics import send_access_log_to_stderr

        send_access_log_to_stderr()
    service = app.state.service
    _say_where(args, len(index), writes is not None)
    # An index that fails to load stops the server (as Ctrl-C does) rather than leave it answering 503.
    service.on_startup_failure = lambda: os.kill(os.getpid(), signal.SIGTERM)
    # One process: the model and index are loaded once and shared by the request threads.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                access_log=bool(args.verbose), **server_options)
    _raise_start_up_error(service.startup_error)
    return 0


def _run_workers(args: argparse.Namespace, app_options: dict, backend_options: dict, server_options: dict) -> int:
    """``--workers N``: check the index once, then let uvicorn's supervisor start N processes that each build
    the application from the same options (:mod:`clothsim.web.workers`)."""
    import uvicorn

    from clothsim.features.store import FeatureStore
    from clothsim.web.service import verify_store
    from clothsim.web.workers import CONFIG_ENV, STARTUP_ERROR_FILE, WorkerConfig
    from clothsim.web.writes import default_upload_dir

    store = FeatureStore.open(args.index)
    verify_store(store)  # every checksum, once, before any worker starts
    scratch = Path(tempfile.mkdtemp(prefix="clothsim-serve-"))
    (scratch / "metrics").mkdir()
    writes = None
    if args.writes:
        writes = {"key_env": args.api_key_env, "upload_dir": str(args.upload_dir or default_upload_dir(args.index)),
                  "path_roots": list(args.write_path_root), "url_prefixes": list(args.write_url_prefix)}
    config = WorkerConfig(index=str(Path(args.index).resolve()), workers=args.workers, scratch_dir=str(scratch),
                          weights=args.weights, device=args.device, runtime=args.runtime, threads=args.threads,
                          backend_options=backend_options, app_options=app_options,
                          header_timeout_s=args.header_timeout, writes=writes, access_log=args.access_log,
                          log_level=logging.getLogger().getEffectiveLevel())
    # Read by the workers, which uvicorn starts as fresh interpreters; prometheus-client reads its folder
    # when imported there.
    saved = {name: os.environ.get(name) for name in (CONFIG_ENV, "PROMETHEUS_MULTIPROC_DIR")}
    os.environ[CONFIG_ENV] = config.to_env()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    _say_where(args, len(store), writes is not None)
    try:
        uvicorn.run("clothsim.web.workers:create_worker_app", factory=True, workers=args.workers, host=args.host,
                    port=args.port, log_level="info" if args.verbose else "warning", access_log=bool(args.verbose),
                    **server_options)
        failed = scratch / STARTUP_ERROR_FILE
        if failed.is_file():
            raise ClothsimError(f"a worker could not start: {failed.read_text(encoding='utf-8')}")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise UsageError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    for option in ("batch_wait_ms", "follow_seconds"):
        if getattr(args, option) < 0:
            raise UsageError(f"--{option.replace('_', '-')} must not be negative, got {getattr(args, option)}")
    for option in ("memory_budget_mb", "header_timeout", "body_timeout", "shutdown_timeout"):
        if getattr(args, option) <= 0:
            raise UsageError(f"--{option.replace('_', '-')} must be positive, got {getattr(args, option)}")


def _say_where(args: argparse.Namespace, items: int, writes: bool) -> None:
    if not _is_loopback(args.host):
        logger.warning("listening on %s: anyone who can reach this address can search the index and "
                       "fetch its images%s", args.host,
                       "; writes carry the API key in clear text unless a TLS proxy is in front" if writes else "")
    workers = f" with {args.workers} worker processes" if args.workers > 1 else ""
    print(f"clothsim: serving {items} items at http://{args.host}:{args.port}/{workers} (Ctrl-C to stop)",
          flush=True)


def _write_settings(args: argparse.Namespace):
    """What REST writes may do, or ``None`` without --writes (the options that need it are refused)."""
    from clothsim.web.auth import ApiKey
    from clothsim.web.writes import WriteSettings, default_upload_dir

    if not args.writes:
        for option in ("upload_dir", "write_path_root", "write_url_prefix"):
            if getattr(args, option):
                raise UsageError(f"--{option.replace('_', '-')} needs --writes")
        return None
    for root in args.write_path_root:
        if not os.path.isdir(root):
            raise UsageError(f"--write-path-root {root}: no such folder")
    try:
        return WriteSettings(ApiKey.from_env(args.api_key_env), Path(args.upload_dir or default_upload_dir(args.index)),
                             path_roots=tuple(Path(p) for p in args.write_path_root),
                             url_prefixes=tuple(args.write_url_prefix))
    except ValueError as exc:
        raise UsageError(f"--write-url-prefix: {exc}") from exc


def _raise_start_up_error(error: BaseException | None) -> None:
    if error is None:
        return
    if isinstance(error, ValueError):  # a memory budget the index and encoder alone already exceed
        raise UsageError(f"--memory-budget-mb: {error}") from error
    raise error

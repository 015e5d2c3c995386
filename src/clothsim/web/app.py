"""The FastAPI application: a search page and a small REST API over one catalogue.

Routes:

* ``GET /``: the search page (plain HTML/CSS/JS from ``static/``; nothing is loaded from elsewhere).
* ``POST /api/search``: multipart form with ``image`` (a file), ``id`` (a catalogue item) or ``text``
  (indexes whose encoder has a text tower; with ``image``, mixed by ``text_weight``), plus ``k`` and
  ``category``, and ``collapse`` (one result per group of near-duplicates); returns
  :class:`~clothsim.web.schemas.SearchResponse`.
* ``POST /api/duplicates``: multipart form with ``image``: the catalogue items it is a near-duplicate of.
* ``GET /api/items/{id}/image``: the image of an indexed item (the path comes from the store).
* ``GET /api/categories``, ``GET /health`` (alive), ``GET /ready`` (the index is open and warmed),
  ``GET /metrics`` (Prometheus), and FastAPI's ``/openapi.json``, ``/docs``, ``/redoc``.
* Only when the server is given an API key (``writes``): ``POST /api/items`` (add an item) and
  ``DELETE /api/items/{id}``, with ``Authorization: Bearer <key>`` (401 without it, 403 with another).
  ``/openapi.json`` is served by the application; the ``/docs`` and ``/redoc`` pages fetch their
  JavaScript from a CDN, so they need a browser with internet access.

Errors are JSON ``{"detail": ...}``: 413 for uploads over the byte or pixel limit, 415 for files that
are not decodable images, 404 for unknown ids, 422 for missing, conflicting or out-of-range fields, 408
for a request body that stalls or trickles past its deadline, 503 (with ``Retry-After``) when the memory
budget for decoding is taken or the index's database server (Milvus) cannot be reached. Errors quote at
most a short prefix of what the client sent.
"""

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI

from clothsim import __version__
from clothsim.similarity_index import SimilarityIndex
from clothsim.defaults import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_BODY_IDLE_TIMEOUT_S,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_DECODE_SLOTS,
    DEFAULT_FOLLOW_S,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_K,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_QUEUE_TIMEOUT_S,
)
from clothsim.web.compute import ThreadPlan
from clothsim.web.auth import WriteAuthMiddleware
from clothsim.web.limits import BodySizeLimitMiddleware, BodyTimeoutMiddleware
from clothsim.web.metrics import RequestObserver, ServerMetrics
from clothsim.web.routes import add_error_handlers, add_search_route, add_service_routes, add_write_routes
from clothsim.web.service import SearchService
from clothsim.web.writes import WriteSettings

logger = logging.getLogger(__name__)

# Room for multipart boundaries, part headers and the small text fields around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def create_app(
    index: SimilarityIndex,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_k: int = DEFAULT_MAX_K,
    decode_slots: int = DEFAULT_DECODE_SLOTS,
    memory_budget_mb: float | None = None,
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
    body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    verify_index: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
    backend_options: dict[str, Any] | None = None,
    follow_s: float = DEFAULT_FOLLOW_S,
    warm_in_background: bool = False,
    writes: WriteSettings | None = None,
    access_log: bool = False,
    threads: ThreadPlan | None = None,
) -> FastAPI:
    """Build the web application around an open index (loaded once, shared by all requests).

    Args:
        index: The index to search, opened from its folder; states committed to that folder later are
            searched once committed.
        max_upload_bytes: Largest accepted upload; bigger ones get 413 (the whole request body may be
            this plus a small allowance for the multipart framing).
        max_pixels: Largest accepted image in pixels; bigger ones get 413 before they are decoded.
        max_k: Largest ``k`` a query may ask for.
        decode_slots: Uploads decoded at full size at the same time.
        memory_budget_mb: The most the server process should hold resident, in MiB; uploads reserve what
            decoding them needs from what start-up left, and wait (then get 503) when it is taken.
            ``None``: only ``decode_slots`` bounds them.
        queue_timeout_s: How long an upload waits for memory before 503.
        body_idle_timeout_s: A request body that sends nothing for this long is dropped (408).
        body_timeout_s: A request body not complete after this long is dropped (408).
        verify_index: Check every checksum of the index first; a damaged index is refused.
        max_batch: Most uploads encoded together (:mod:`clothsim.web.batching`).
        batch_wait_s: How long a batch waits for uploads still being decoded after its first is ready.
        backend_options: Search-time backend options ``index`` was opened with (kept when the folder is
            opened again after a change).
        follow_s: Seconds between looks at the index folder for states committed by others (a sync by
            ``clothsim index``, a write in another worker); ``0``: never (:mod:`clothsim.web.snapshot`).
        warm_in_background: Verify the index now but warm it once the server runs; ``/ready`` answers 503
            (and searches 503 with ``Retry-After``) until it is done.
        writes: Turns on ``POST /api/items`` and ``DELETE /api/items/{id}`` behind an API key
            (:mod:`clothsim.web.writes`); ``None`` (the default): the catalogue is read-only.
        access_log: Write one JSON line per request to the ``clothsim.access`` logger.
        threads: How this process uses its cores (default: all of them; :mod:`clothsim.web.compute`).

    Returns:
        The FastAPI application; serve it with uvicorn (``clothsim serve`` does).

    Raises:
        StoreIntegrityError: the index is damaged (and ``verify_index``).
    """
    metrics = ServerMetrics()
    service = SearchService(index, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                            max_k=max_k, decode_slots=decode_slots, queue_timeout_s=queue_timeout_s,
                            memory_budget_bytes=None if memory_budget_mb is None else int(memory_budget_mb * 2**20),
                            verify_index=verify_index, max_batch=max_batch, batch_wait_s=batch_wait_s,
                            backend_options=backend_options, follow_s=follow_s,
                            warm_in_background=warm_in_background, writes=writes,
                            observer=metrics, threads=threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.close()  # after uvicorn has finished the requests in flight
        metrics.process_exited()

    app = FastAPI(
        lifespan=lifespan,
        title="clothsim",
        version=__version__,
        summary="Visual clothing similarity: the catalogue items most similar to a photo.",
        description="Upload a photo (or name a catalogue item) and get the most similar items by cosine "
                    "similarity of CNN features. The interactive /docs page loads Swagger UI from a CDN "
                    "and needs internet access; /openapi.json is served locally.",
    )
    app.state.service = service
    app.state.metrics = metrics
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD_BYTES)
    if writes is not None:
        # Outside the size limit: a write without the key is refused before its body is read.
        app.add_middleware(WriteAuthMiddleware, key=writes.key)
    app.add_middleware(BodyTimeoutMiddleware, idle_timeout_s=body_idle_timeout_s, total_timeout_s=body_timeout_s)
    # Added last, so it runs first: every answer is counted and timed, refusals by the others included.
    app.add_middleware(RequestObserver, metrics=metrics, access_log=access_log, routes=app.router.routes)

    add_error_handlers(app)
    add_service_routes(app, service, metrics)
    add_search_route(app, service, max_k)
    if writes is not None:
        add_write_routes(app, service, writes)
    return app

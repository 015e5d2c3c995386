"""The routes of the web application, added to it by :func:`clothsim.web.app.create_app`.

Each ``add_*`` function adds one group of routes (or the error handlers) to an application around a
:class:`~clothsim.web.service.SearchService`; the routes themselves are listed in :mod:`clothsim.web.app`.
"""

# No `from __future__ import annotations` here: FastAPI evaluates the route annotations at start-up,
# and `Form(le=max_k)` refers to a parameter of add_search_route.
import io
import logging
import mimetypes
import os
import time
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from clothsim.features.store import StoreIntegrityError
from clothsim.index.base import BackendUnavailable
from clothsim.index.base import SearchHit
from clothsim.web.metrics import ServerMetrics
from clothsim.web.schemas import (
    AddedItem,
    CategoriesResponse,
    CategoryCount,
    CopiesResponse,
    DeletedItem,
    ErrorBody,
    Health,
    Hit,
    QueryInfo,
    Readiness,
    SearchResponse,
)
from clothsim.web.service import ECHO_CHARS, MAX_TEXT_CHARS, QueryRejected, SearchService
from clothsim.web.writes import (
    WriteRefused,
    WriteSettings,
    fetch_url,
    image_format,
    item_fields,
    keep_photo,
    read_path,
)

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_STATUS = {"too_large": 413, "not_image": 415, "unknown_item": 404, "bad_request": 422, "busy": 503}
_WRITE_STATUS = {**_STATUS, "forbidden_source": 422}
FILENAME_CHARS = 100
_ERRORS = {code: {"model": ErrorBody} for code in (404, 413, 415, 503)}


def _image_url(request: Request, item_id: int) -> str:
    # A path, not an absolute URL: correct behind a proxy and under a root_path alike.
    return request.url_for("item_image", item_id=str(item_id)).path


def _hit(request: Request, hit: SearchHit) -> Hit:
    return Hit(rank=hit.rank, id=hit.id, score=round(float(hit.score), 6), category=hit.record.category,
               name=Path(hit.record.path).name, split=hit.record.split, item_id=hit.record.item_id,
               image_url=_image_url(request, hit.id), group_size=hit.group_size)


def add_error_handlers(app: FastAPI) -> None:
    """JSON ``{"detail": ...}`` answers for refused queries and writes, an unreachable index server and
    invalid forms."""

    @app.exception_handler(QueryRejected)
    async def _rejected(request: Request, exc: QueryRejected) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"detail": exc.message}, status_code=_STATUS.get(exc.kind, 400), headers=headers)

    @app.exception_handler(WriteRefused)
    async def _write_refused(request: Request, exc: WriteRefused) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"detail": exc.message}, status_code=_WRITE_STATUS.get(exc.kind, 400), headers=headers)

    @app.exception_handler(StoreIntegrityError)
    async def _damaged(request: Request, exc: StoreIntegrityError) -> JSONResponse:
        # Damage found while answering (a row's checksum): refused, never served. The server stops being
        # ready so a load balancer sends traffic elsewhere; the file and the repair go to the log only.
        request.app.state.service.mark_damaged(exc)
        return JSONResponse({"detail": "the index is damaged and this server stopped answering from it; "
                                       "its operator has been told how to repair it"},
                            status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        # The index's database server is down or restarting: the same request may succeed shortly. Its
        # address stays in the log, not in an answer to the public.
        logger.warning("search failed, the index's server is unavailable: %s", exc)
        return JSONResponse({"detail": "the index's database server cannot be reached; try again shortly"},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own report, with each offending input cut to a short prefix (never echoed whole).
        errors = []
        for error in exc.errors():
            error = {key: value for key, value in error.items() if key not in ("ctx", "url")}
            if "input" in error:
                value = error["input"]
                error["input"] = value if isinstance(value, (int, float, bool)) or value is None \
                    else str(value)[:ECHO_CHARS]
            error["msg"] = str(error.get("msg", ""))[:200]
            errors.append(error)
        return JSONResponse({"detail": errors}, status_code=422)


def add_service_routes(app: FastAPI, service: SearchService, metrics: ServerMetrics) -> None:
    """The page, its static files, ``/health``, ``/ready``, ``/metrics``, the categories and item images."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health", response_model=Health, tags=["service"], summary="Liveness, index size, limits")
    def health() -> Health:
        """Liveness (the process answers), whether it is ready, index size and the limits it applies."""
        return Health(status="ok", ready=service.ready, pid=os.getpid(), items=len(service),
                      categories=len(service.categories()),
                      encoder=service.encoder.name, dim=int(service.encoder.dim), max_k=service.max_k,
                      max_upload_bytes=service.max_upload_bytes, max_pixels=service.max_pixels,
                      text_search=service.text_search)

    @app.get("/ready", response_model=Readiness, tags=["service"], responses={503: {"model": Readiness}},
             summary="Readiness: the index is open and warmed")
    def ready() -> JSONResponse:
        """Readiness: 200 once the index is open and warmed (searches are answered at full speed), 503
        before. A load balancer sends searches only to a ready server."""
        if not service.ready:
            reason = ("the index failed to load" if service.startup_error is not None else
                      "the index is damaged" if service.damage is not None else "warming up")
            return JSONResponse(Readiness(ready=False, detail=reason).model_dump(), status_code=503,
                                headers={"Retry-After": "2"})
        snapshot = service.follower.current
        return JSONResponse(Readiness(ready=True, detail="ready", items=len(snapshot),
                                      generation=snapshot.generation).model_dump())

    @app.get("/metrics", tags=["service"], response_class=Response, summary="Metrics in the Prometheus format",
             responses={200: {"content": {"text/plain": {}}}})
    def prometheus_metrics() -> Response:
        """Counters, histograms and gauges in the Prometheus text format (see :mod:`clothsim.web.metrics`)."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/api/categories", response_model=CategoriesResponse, tags=["catalogue"],
             summary="Categories and their item counts")
    def categories() -> CategoriesResponse:
        """The categories in the index, with their item counts (the values ``category`` accepts)."""
        counts = service.categories()
        return CategoriesResponse(categories=[CategoryCount(name=n, count=c) for n, c in counts.items()],
                                  total=len(service))

    @app.get("/api/items/{item_id}/image", name="item_image", tags=["catalogue"], summary="An item's image",
             response_class=FileResponse, responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorBody}})
    def item_image(item_id: int) -> FileResponse:
        """The image file of an indexed item. Only files recorded in the index are ever served."""
        path = service.item_path(item_id)
        # Only an image type is ever declared, and browsers are told not to guess: a file named .html
        # that was indexed as an image must never run as a page of this origin.
        media_type = mimetypes.guess_type(path.name)[0] or ""
        if not media_type.startswith("image/") or media_type == "image/svg+xml":
            media_type = "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={
            "Cache-Control": "max-age=60", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox"})


def add_search_route(app: FastAPI, service: SearchService, max_k: int) -> None:
    """``POST /api/search``; ``k`` is accepted up to ``max_k``."""

    @app.post("/api/search", response_model=SearchResponse, tags=["search"], responses=_ERRORS,
              summary="The most similar items to a photo or an item")
    def search(
        request: Request,
        image: Annotated[UploadFile | None, File(description="a photo (JPEG, PNG, WebP, ...)")] = None,
        item_id: Annotated[int | None, Form(alias="id", description="or: the id of a catalogue item")] = None,
        k: Annotated[int, Form(ge=1, le=max_k, description="how many results")] = 5,
        category: Annotated[str | None, Form(description="only this category; empty for all")] = None,
        text: Annotated[str | None, Form(max_length=MAX_TEXT_CHARS, description="or: a text (indexes whose encoder "
                                         "has a text tower); with image, the two are mixed")] = None,
        text_weight: Annotated[float, Form(ge=0, le=1, description="with image and text: the text's share")] = 0.5,
        collapse: Annotated[bool, Form(description="one result per group of near-duplicates, with its size")] = False,
    ) -> SearchResponse:
        """The ``k`` catalogue items most similar to an uploaded photo, a catalogue item, a text, or a photo
        and a text together.

        Send ``image``, ``id`` or ``text``; ``text`` may come with ``image``.
        """
        started = time.perf_counter()
        category = category or None
        text = text if text and text.strip() else None
        if text is not None and item_id is not None:
            raise QueryRejected("bad_request", "the form field 'text' goes alone or with 'image', not with 'id'")
        if text is not None and image is None:
            hits = service.search_text(text, k, category, collapse=collapse)
            return SearchResponse(query=QueryInfo(kind="text", text=text), k=k, category=category,
                                  results=[_hit(request, h) for h in hits], collapse=collapse,
                                  took_ms=round((time.perf_counter() - started) * 1000.0, 2))
        if (image is None) == (item_id is None):
            which = "both" if image is not None else "neither"
            raise QueryRejected("bad_request", f"send exactly one of the form fields 'image' (a file) and "
                                               f"'id' (a catalogue item); got {which}")
        service.check_query(k, category)
        if image is not None:
            result = service.search_upload(image.file, _upload_size(image), k, category, text=text,
                                           text_weight=text_weight,
                                           collapse=collapse)
            hits = result.hits
            name = image.filename
            if name is not None and len(name) > FILENAME_CHARS:
                name = name[:FILENAME_CHARS] + "..."
            query = QueryInfo(kind="upload", filename=name, size_bytes=result.size_bytes,
                              width=result.width, height=result.height, text=text)
        else:
            hits, record = service.search_item(item_id, k, category, collapse=collapse)
            query = QueryInfo(kind="item", id=item_id, category=record.category,
                              image_url=_image_url(request, item_id))
        return SearchResponse(query=query, k=k, category=category, results=[_hit(request, h) for h in hits],
                              collapse=collapse, took_ms=round((time.perf_counter() - started) * 1000.0, 2))

    @app.post("/api/duplicates", response_model=CopiesResponse, tags=["search"], responses=_ERRORS,
              summary="Whether a photo already has near-duplicates in the catalogue")
    def duplicates(
        request: Request,
        image: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, ...)")],
        limit: Annotated[int, Form(ge=1, le=max_k, description="at most this many copies")] = 10,
    ) -> CopiesResponse:
        """The catalogue items an uploaded photo is a near-duplicate of (a resized, re-compressed, cropped,
        mirrored or slightly recoloured copy, or the same file), best first, at the threshold calibrated
        for the index (`clothsim duplicates --calibrate`), else the default."""
        started = time.perf_counter()
        copies, threshold = service.copies_of_upload(image.file, _upload_size(image), limit)
        return CopiesResponse(threshold=threshold, copies=[_hit(request, h) for h in copies],
                              took_ms=round((time.perf_counter() - started) * 1000.0, 2))


def _upload_size(image: UploadFile) -> int:
    """The uploaded file's size in bytes (measured when the form parser did not say)."""
    if image.size is not None:
        return image.size
    size = image.file.seek(0, 2)
    image.file.seek(0)
    return size


def add_write_routes(app: FastAPI, service: SearchService, writes: WriteSettings) -> None:
    """``POST /api/items`` and ``DELETE /api/items/{id}`` (the key is checked by :class:`WriteAuthMiddleware`)."""
    refused = {code: {"model": ErrorBody} for code in (401, 403, 404, 413, 415, 422, 503)}

    @app.post("/api/items", status_code=201, response_model=AddedItem, tags=["catalogue writes"], responses=refused,
              summary="Add an item")
    def add_item(
        request: Request,
        image: Annotated[UploadFile | None, File(description="the item's photo")] = None,
        path: Annotated[str | None, Form(description="or: an absolute path under a --write-path-root folder")] = None,
        url: Annotated[str | None, Form(description="or: a URL under a --write-url-prefix")] = None,
        category: Annotated[str | None, Form(description="its category (required when the index has them)")] = None,
        split: Annotated[str | None, Form(description="train, validation, test, query or gallery")] = None,
        item_id: Annotated[str | None, Form(description="the garment's identity in the shop")] = None,
        attributes: Annotated[str | None, Form(description="comma-separated attribute names")] = None,
    ) -> AddedItem:
        """Add an item to the catalogue: its photo (uploaded, or read from a path or URL the server may
        read) is encoded and committed; it is returned by searches as soon as this answers. Needs
        ``Authorization: Bearer <key>``."""
        started = time.perf_counter()
        sources = [name for name, value in (("image", image), ("path", path), ("url", url)) if value]
        if len(sources) != 1:
            raise WriteRefused("bad_request", "send exactly one of the form fields 'image' (a file), 'path' and "
                                              f"'url'; got {', '.join(sources) or 'none'}")
        service.require_ready()
        fields = item_fields(category, split, item_id, attributes, needs_category=bool(service.categories()))
        limit = service.max_upload_bytes
        if image is not None:
            data = image.file.read(limit + 1)
            if len(data) > limit:
                raise WriteRefused("too_large", f"image: the file is over the limit of {limit} bytes")
            kept_path = None
        elif path:
            data, kept_path = read_path(path, writes.path_roots, limit)
        else:
            data, kept_path = fetch_url(url, writes.url_prefixes, limit, writes.fetch_timeout_s), None
        vector, _, _ = service.embed_upload(io.BytesIO(data), len(data))  # checks it is an image first
        if kept_path is None:
            kept_path = keep_photo(writes.upload_dir, data, image_format(data))
        record = fields.record(kept_path)
        new_id = service.writer.add(vector, record)
        return AddedItem(id=new_id, category=record.category, split=record.split, item_id=record.item_id,
                         attributes=list(record.attributes), name=kept_path.name,
                         image_url=_image_url(request, new_id),
                         took_ms=round((time.perf_counter() - started) * 1000.0, 2))

    @app.delete("/api/items/{item_id}", response_model=DeletedItem, tags=["catalogue writes"], responses=refused,
                summary="Delete an item")
    def delete_item(item_id: int) -> DeletedItem:
        """Delete an item: once this answers, no search returns it. Needs ``Authorization: Bearer <key>``."""
        started = time.perf_counter()
        service.require_ready()
        service.writer.delete(item_id)
        return DeletedItem(id=item_id, deleted=True, took_ms=round((time.perf_counter() - started) * 1000.0, 2))

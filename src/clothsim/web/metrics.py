"""What an operator sees: ``/metrics`` in the Prometheus text format, and structured access logs.

Metrics are named ``clothsim_<what>_<unit>`` (``prometheus-client``) and cheap enough to leave on:

* ``clothsim_http_requests_total{route,method,status}`` and ``clothsim_http_request_duration_seconds{route,method}``
  for every request (``route`` is the route's template, e.g. ``/api/items/{item_id}/image``, so ids never
  become labels), and ``clothsim_http_requests_in_flight``;
* ``clothsim_encode_batch_size`` and ``clothsim_encode_batch_seconds`` per encoder batch
  (:mod:`clothsim.web.batching`);
* ``clothsim_index_items``, ``clothsim_index_generation``, ``clothsim_index_reloads_total`` for the
  state being searched (:mod:`clothsim.web.snapshot`), ``clothsim_ready``;
* ``clothsim_memory_budget_bytes`` and ``clothsim_memory_budget_used_bytes`` (the upload decoding budget);
* ``clothsim_writes_total{kind}`` and ``clothsim_write_group_seconds`` for REST writes.

With several worker processes (``clothsim serve --workers N``) every process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, set up by the command before the
workers start) and ``/metrics`` adds them up, whichever worker answers the scrape.

:class:`RequestObserver` is the ASGI middleware that counts and times requests and, when asked, writes one
JSON line per request to the ``clothsim.access`` logger.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.process_collector import ProcessCollector

from clothsim.web.service import ServiceObserver

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from clothsim.web.snapshot import Snapshot

ACCESS_LOGGER = "clothsim.access"
access_logger = logging.getLogger(ACCESS_LOGGER)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)


def send_access_log_to_stderr() -> None:
    """The access log's JSON lines, as they are, on stderr, whatever the level of the other logs (for the
    command line: a library never configures logging)."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def multiprocess_dir() -> str | None:
    """The folder prometheus-client's multiprocess mode writes to, when this process is one of several."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


#: HTTP methods kept as they are in metric labels; any other counts as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

class ServerMetrics(ServiceObserver):
    """The server's metrics, in a registry of their own (one per application, so several applications in one
    process, as in tests, do not collide); the search service reports to it as its observer."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds, open files
        r = self.registry
        self.requests = Counter("clothsim_http_requests", "HTTP requests answered, by route template, method and "
                                "status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("clothsim_http_request_duration_seconds", "Time from a request's start to the "
                                 "end of its answer", ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("clothsim_http_requests_in_flight", "Requests being handled now", registry=r,
                               multiprocess_mode="livesum")
        self.batch_size = Histogram("clothsim_encode_batch_size", "Photos per encoder batch",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("clothsim_encode_batch_seconds", "Encoder time per batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.items = Gauge("clothsim_index_items", "Live items in the index state being searched", registry=r,
                           multiprocess_mode="livemax")
        self.generation = Gauge("clothsim_index_generation", "Commit number of the index state being searched",
                                registry=r, multiprocess_mode="livemax")
        self.reloads = Counter("clothsim_index_reloads", "Times a newer index state replaced the one searched",
                               registry=r)
        self.ready = Gauge("clothsim_ready", "1 once the index is open and warmed (the least over workers)",
                           registry=r, multiprocess_mode="livemin")
        self.budget = Gauge("clothsim_memory_budget_bytes", "Memory that uploads may hold while decoding",
                            registry=r, multiprocess_mode="livesum")
        self.budget_used = Gauge("clothsim_memory_budget_used_bytes", "Memory that uploads hold now", registry=r,
                                 multiprocess_mode="livesum")
        self.writes = Counter("clothsim_writes", "Items added or deleted over REST", ["kind"], registry=r)
        self.write_seconds = Histogram("clothsim_write_group_seconds", "Time to commit and publish one group of "
                                       "REST writes", buckets=_LATENCY_BUCKETS, registry=r)
        self.ready.set(0)

    # ----- what the service reports ----------------------------------------------------------
    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_writes(self, adds: int, deletes: int, seconds: float) -> None:
        self.writes.labels("add").inc(adds)
        self.writes.labels("delete").inc(deletes)
        self.write_seconds.observe(seconds)

    def observe_snapshot(self, snapshot: "Snapshot", reload: bool = True) -> None:
        self.items.set(len(snapshot))
        self.generation.set(snapshot.generation)
        if reload:
            self.reloads.inc()

    def observe_ready(self, snapshot: "Snapshot") -> None:
        self.observe_snapshot(snapshot, reload=False)
        self.ready.set(1)

    def observe_budget(self, used: int, capacity: int) -> None:
        self.budget_used.set(used)
        self.budget.set(capacity)

    # ----- the scrape ------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def process_exited(self) -> None:
        """Drop this process's live gauges from the shared files (a worker shutting down)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())


class RequestObserver:
    """ASGI middleware: counts and times every request by route template and status, and writes one JSON line
    per request to the ``clothsim.access`` logger when ``access_log`` is on.

    Args:
        app: The ASGI application.
        metrics: Where the counts go.
        access_log: Whether to log each request.
        routes: The application's routes, to name the route of a request that a middleware answered before
            routing (a write refused for its key).
    """

    def __init__(self, app: "ASGIApp", metrics: ServerMetrics, access_log: bool = False,
                 routes: Sequence[Any] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.routes = routes

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "bytes": 0}

        async def observed_send(message: "Message") -> None:
            if message["type"] == "http.response.start":
                state["status"] = int(message["status"])
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or self._route_of(scope)
            method = scope.get("method", "")
            # A label per method a client invents would grow the metrics without bound.
            method = method if method in KNOWN_METHODS else "other"
            self.metrics.requests.labels(route, method, str(state["status"])).inc()
            self.metrics.latency.labels(route, method).observe(seconds)
            if self.access_log:
                client = scope.get("client") or ("", 0)
                access_logger.info(json.dumps({
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": client[0], "method": method,
                    "path": scope.get("path", "")[:200], "route": route, "status": state["status"],
                    "duration_ms": round(seconds * 1000.0, 2), "response_bytes": state["bytes"],
                    "pid": os.getpid()}))

    def _route_of(self, scope: "Scope") -> str:
        from starlette.routing import Match

        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", "<unmatched>"))
        return "<unmatched>"

"""Load test for ``clothsim serve``: concurrent searches against a local server, then a summary.

Starts ``clothsim serve`` on 127.0.0.1 (a free port) over ``--index``, or targets a running local
server with ``--url``; sends exactly ``--requests`` searches from ``--clients`` threads, each with its
own HTTP connection; prints requests/s, latency percentiles and errors; stops the server it started.

    python benchmarks/load_test.py --index catalog/ --clients 8 --requests 200
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --queries photos/test --mode upload
    python benchmarks/load_test.py --index faiss-catalog/ --mode id --backend-option efSearch=128

The server searches with the backend recorded in the index folder (exact, faiss-hnsw, faiss-ivfpq,
milvus); ``--backend-option KEY=VALUE`` passes search-time options on to ``clothsim serve``.

Modes: ``upload`` posts photos (from ``--queries``, else the indexed images themselves), ``id``
searches from catalogue items, ``mixed`` alternates. It only ever talks to a loopback address.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

try:
    import httpx
except ImportError as exc:  # pragma: no cover - a script run by hand
    raise SystemExit(f"the load test needs httpx: pip install httpx ({exc})") from exc

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--index", type=Path, help="index folder: start a local server over it")
    target.add_argument("--url", help="a running server on a loopback address, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--requests", type=int, default=200, help="searches to send in all (default 200)")
    parser.add_argument("--mode", choices=["upload", "id", "mixed"], default="upload")
    parser.add_argument("--queries", type=Path, help="folder of query photos (searched recursively)")
    parser.add_argument("--max-queries", type=int, default=64, help="distinct query photos to cycle through")
    parser.add_argument("-k", type=int, default=5, help="results per search (default 5)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed searches before the run (default 4)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--startup-timeout", type=float, default=300.0,
                        help="seconds to wait for a started server to be ready (/ready; default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                        help="search-time option of the index's backend, passed to `clothsim serve` (repeatable)")
    args = parser.parse_args(argv)
    for name in ("clients", "requests", "max_queries", "k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.url:
        host = urlsplit(args.url).hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            parser.error(f"--url must point at this machine (127.0.0.1 or localhost), got {host!r}")
    if args.url and args.mode != "id" and args.queries is None:
        parser.error("with --url, give --queries (a folder of photos) or use --mode id")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """``clothsim serve`` in a child process on 127.0.0.1, stopped on exit."""

    def __init__(self, index: Path, startup_timeout: float, backend_options: list[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in stop()
        command = [sys.executable, "-m", "clothsim.cli.main", "serve", "--index", str(index),
                   "--host", "127.0.0.1", "--port", str(self.port)]
        for option in backend_options:
            command += ["--backend-option", option]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not answer within {startup_timeout:.0f} s:\n{self.output()}")
            time.sleep(0.25)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def query_photos(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    if args.queries is not None:
        paths = sorted(p for p in args.queries.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        from clothsim.features.store import FeatureStore

        paths = [Path(it.record.path) for it in FeatureStore.open(args.index).items()]
    if not paths:
        raise SystemExit("no query photos found")
    chosen = random.Random(args.seed).sample(paths, min(args.max_queries, len(paths)))
    return [(p.name, p.read_bytes()) for p in chosen]


def item_ids(args: argparse.Namespace, url: str) -> list[int]:
    if args.index is not None:
        from clothsim.features.store import FeatureStore

        return [int(i) for i in FeatureStore.open(args.index).live_ids()]
    return list(range(httpx.get(url + "/health", timeout=10).json()["items"]))


def run_load(args: argparse.Namespace, url: str) -> dict:
    photos = query_photos(args) if args.mode != "id" else []
    ids = item_ids(args, url) if args.mode != "upload" else []
    rng = random.Random(args.seed)

    def make_request(n: int) -> dict:
        use_id = args.mode == "id" or (args.mode == "mixed" and n % 2 == 1)
        if use_id:
            return {"data": {"id": str(ids[rng.randrange(len(ids))]), "k": str(args.k)}}
        name, data = photos[n % len(photos)]
        return {"data": {"k": str(args.k)}, "files": {"image": (name, data, "application/octet-stream")}}

    plan = [make_request(n) for n in range(args.requests + args.warmup)]
    with httpx.Client(timeout=args.timeout) as warm:
        for request in plan[: args.warmup]:
            warm.post(url + "/api/search", **request)
    work = plan[args.warmup:]
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()

    def client() -> None:
        with httpx.Client(timeout=args.timeout) as session:
            while True:
                with lock:
                    n = next(counter)
                if n >= len(work):
                    return
                started = time.perf_counter()
                try:
                    status = str(session.post(url + "/api/search", **work[n]).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    outcomes[status] += 1

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(args.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started

    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return 1000.0 * ordered[min(len(ordered) - 1, max(0, round(p / 100.0 * len(ordered)) - 1))]

    return {
        "url": url, "mode": args.mode, "clients": args.clients, "requests": len(work), "k": args.k,
        "wall_s": round(wall, 3), "requests_per_s": round(len(work) / wall, 2),
        "p50_ms": round(pct(50), 1), "p90_ms": round(pct(90), 1), "p99_ms": round(pct(99), 1),
        "max_ms": round(1000.0 * ordered[-1], 1),
        "errors": sum(n for status, n in outcomes.items() if status != "200"),
        "outcomes": dict(sorted(outcomes.items())),
        "cpu_count": os.cpu_count(),
        "backend": index_backend(args.index) if args.index is not None else None,
    }


def index_backend(index: Path) -> str:
    """The backend recorded in an index folder's manifest (exact when none is recorded)."""
    manifest = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
    return manifest.get("index_backend") or "exact"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = LocalServer(args.index, args.startup_timeout, args.backend_option) if args.url is None else None
    try:
        summary = run_load(args, server.url if server else args.url.rstrip("/"))
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        on = f" ({summary['backend']} backend)" if summary["backend"] else ""
        print(f"{summary['requests']} {summary['mode']} searches (k={summary['k']}) from {summary['clients']} "
              f"clients against {summary['url']}{on} in {summary['wall_s']:.1f} s")
        print(f"throughput  {summary['requests_per_s']:.1f} requests/s")
        print(f"latency     p50 {summary['p50_ms']:.0f} ms   p90 {summary['p90_ms']:.0f} ms   "
              f"p99 {summary['p99_ms']:.0f} ms   max {summary['max_ms']:.0f} ms")
        print(f"errors      {summary['errors']}   (responses: {summary['outcomes']})")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

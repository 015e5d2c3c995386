"""Load test for ``clothsim serve``: concurrent searches (and REST writes) against a local server, then a summary.

Starts ``clothsim serve`` on 127.0.0.1 (a free port) over ``--index``, or targets a running local server with
``--url``; for each client count in ``--clients`` sends exactly ``--requests`` searches from that many threads,
each with its own HTTP connection, and prints one row per count: requests/s, its ratio to the first row,
latency percentiles, errors and, for a server it started, the server's CPU time per request and its memory.
All rows come from one server in one run, so the ratios are side by side.

    python benchmarks/load_test.py --index catalog/ --mode id --clients 1,8,32 --requests 2000
    python benchmarks/load_test.py --index catalog/ --queries photos/test --clients 1,16 --requests 300
    python benchmarks/load_test.py --index catalog/ --mode id --clients 1,8,32 --workers 2
    python benchmarks/load_test.py --index catalog/ --queries photos/test --writes 1000 --clients 4
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --mode id --clients 8

The server searches with the backend recorded in the index folder (exact, faiss-hnsw, faiss-ivfpq, milvus);
``--backend-option KEY=VALUE`` passes search-time options on to ``clothsim serve``, ``--workers`` and
``--server-arg`` other options.

Modes: ``upload`` posts photos (from ``--queries``, else the indexed images themselves), ``id`` searches from
catalogue items, ``mixed`` alternates.

``--writes N`` (with ``--index``): the server is started with ``--writes``; N items are added over REST (photos
from ``--queries``, ``--write-clients`` at a time), then N/2 of them deleted, while ``--clients`` threads keep
searching with the added photos. Afterwards the store on disk is checked against what was acknowledged (no
acknowledged add missing, none doubled, no acknowledged delete still live) and every search that started
after a delete was acknowledged is checked for the deleted item.

It only ever talks to a loopback address, and every run is bounded in requests and time.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import os
import random
import secrets
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


def client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of client counts, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"client counts must be at least 1, got {text!r}")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--index", type=Path, help="index folder: start a local server over it")
    target.add_argument("--url", help="a running server on a loopback address, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", type=client_counts, default=[8],
                        help="concurrent client threads, or several counts run one after another: 1,8,32 (default 8)")
    parser.add_argument("--requests", type=int, default=200, help="searches to send per client count (default 200)")
    parser.add_argument("--mode", choices=["upload", "id", "mixed"], default="upload")
    parser.add_argument("--queries", type=Path, help="folder of query photos (searched recursively)")
    parser.add_argument("--max-queries", type=int, default=64, help="distinct query photos to cycle through")
    parser.add_argument("-k", type=int, default=5, help="results per search (default 5)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed searches before each run (default 8)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--startup-timeout", type=float, default=300.0,
                        help="seconds to wait for a started server to be ready (/ready; default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                        help="search-time option of the index's backend, passed to `clothsim serve` (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="server processes of a started server (default 1)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="another argument for a started `clothsim serve`, e.g. --server-arg=--max-batch=8")
    parser.add_argument("--writes", type=int, default=0, metavar="N",
                        help="add N items over REST, then delete N/2 of them, under the search load (needs --index)")
    parser.add_argument("--write-clients", type=int, default=4, help="concurrent writers with --writes (default 4)")
    args = parser.parse_args(argv)
    for name in ("requests", "max_queries", "k", "workers", "write_clients"):
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
    if args.writes and (args.index is None or args.queries is None):
        parser.error("--writes needs --index (the store is checked afterwards) and --queries (the photos to add)")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----- the server's own costs, read from /proc ------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds used so far by ``pids``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def memory_mib(pids: list[int]) -> dict[str, float]:
    """Resident (RSS), proportional (PSS: shared pages split between the processes that map them) and peak
    resident memory of ``pids``, summed, in MiB."""
    totals = {"rss_mib": 0.0, "pss_mib": 0.0, "peak_rss_mib": 0.0}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("Rss", "Pss"):
                    totals[f"{name.lower()}_mib"] += int(value.split()[0]) / 1024
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    totals["peak_rss_mib"] += int(line.split()[1]) / 1024
        except (OSError, IndexError, ValueError):
            pass
    return {name: round(value, 1) for name, value in totals.items()}


class LocalServer:
    """``clothsim serve`` in a child process on 127.0.0.1, stopped on exit."""

    def __init__(self, index: Path, startup_timeout: float, extra: list[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in stop()
        command = [sys.executable, "-m", "clothsim.cli.main", "serve", "--index", str(index),
                   "--host", "127.0.0.1", "--port", str(self.port), *extra]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, **(env or {})))
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                ready = httpx.get(self.url + "/ready", timeout=2).status_code
                if ready == 404:  # a server from before /ready (to measure it side by side): warmed when it answers
                    ready = httpx.get(self.url + "/health", timeout=2).status_code
                if ready == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not answer within {startup_timeout:.0f} s:\n{self.output()}")
            time.sleep(0.25)

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output_text = self.output()
        self.log.close()


# ----- what is sent -------------------------------------------------------------------------------------
def photo_paths(args: argparse.Namespace) -> list[Path]:
    if args.queries is not None:
        return sorted(p for p in args.queries.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    from clothsim.features.store import FeatureStore

    return [Path(it.record.path) for it in FeatureStore.open(args.index).items()]


def query_photos(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    paths = photo_paths(args)
    if not paths:
        raise SystemExit("no query photos found")
    chosen = random.Random(args.seed).sample(paths, min(args.max_queries, len(paths)))
    return [(p.name, p.read_bytes()) for p in chosen]


def item_ids(args: argparse.Namespace, url: str) -> list[int]:
    if args.index is not None:
        from clothsim.features.store import FeatureStore

        return [int(i) for i in FeatureStore.open(args.index).live_ids()]
    return list(range(httpx.get(url + "/health", timeout=10).json()["items"]))


def percentile(ordered: list[float], p: float) -> float:
    return 1000.0 * ordered[min(len(ordered) - 1, max(0, round(p / 100.0 * len(ordered)) - 1))]


def run_load(args: argparse.Namespace, url: str, clients: int, photos: list, ids: list[int],
             server: LocalServer | None) -> dict:
    rng = random.Random(args.seed + clients)

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

    pids = server.pids() if server is not None else []
    cpu_before = cpu_seconds(pids)
    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    summary = {
        "url": url, "mode": args.mode, "clients": clients, "requests": len(work), "k": args.k,
        "wall_s": round(wall, 3), "requests_per_s": round(len(work) / wall, 2),
        "p50_ms": round(percentile(ordered, 50), 1), "p90_ms": round(percentile(ordered, 90), 1),
        "p99_ms": round(percentile(ordered, 99), 1), "max_ms": round(1000.0 * ordered[-1], 1),
        "errors": sum(n for status, n in outcomes.items() if status != "200"),
        "outcomes": dict(sorted(outcomes.items())),
        "cpu_count": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "backend": index_backend(args.index) if args.index is not None else None,
        "workers": args.workers if server is not None else None,
    }
    if server is not None:
        summary["server_cpu_ms_per_request"] = round(1000.0 * (cpu_seconds(pids) - cpu_before) / len(work), 2)
        summary["server_memory"] = memory_mib(server.pids())
    return summary


# ----- writes under search load -------------------------------------------------------------------------------
def run_writes(args: argparse.Namespace, url: str, key: str, photos: list[Path]) -> dict:
    """``--writes N`` adds, then N/2 deletes, from ``--write-clients`` threads, while ``--clients[0]`` threads
    search with the added photos; then the store on disk is checked against what was acknowledged."""
    from clothsim.features.store import FeatureStore

    before = FeatureStore.open(args.index)
    original = set(before.live_ids().tolist())
    auth = {"Authorization": f"Bearer {key}"}
    lock = threading.Lock()
    added: dict[str, int] = {}  # item_id -> id, acknowledged
    deleted_at: dict[int, float] = {}  # id -> when its delete was acknowledged (monotonic)
    searches: list[tuple[float, list[int]]] = []  # (start, ids returned)
    outcomes: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {"add": [], "delete": [], "search": []}
    done = threading.Event()

    def record(kind: str, started: float, status: str) -> None:
        with lock:
            latencies[kind].append(time.perf_counter() - started)
            outcomes[f"{kind} {status}"] += 1

    def writer(numbers: list[int]) -> None:
        with httpx.Client(timeout=args.timeout) as session:
            for n in numbers:
                photo = photos[n % len(photos)]
                started = time.perf_counter()
                try:
                    response = session.post(url + "/api/items", headers=auth,
                                            files={"image": (photo.name, photo.read_bytes())},
                                            data={"category": photo.parent.name, "item_id": f"load-{n}"})
                    status = str(response.status_code)
                    if response.status_code == 201:
                        with lock:
                            added[f"load-{n}"] = response.json()["id"]
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                record("add", started, status)

    def deleter(victims: list[int]) -> None:
        with httpx.Client(timeout=args.timeout) as session:
            for item in victims:
                started = time.perf_counter()
                try:
                    response = session.delete(f"{url}/api/items/{item}", headers=auth)
                    status = str(response.status_code)
                    if response.status_code == 200:
                        with lock:
                            deleted_at[item] = time.monotonic()
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                record("delete", started, status)

    def searcher(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=args.timeout) as session:
            while not done.is_set():
                photo = photos[rng.randrange(min(len(photos), args.writes))]
                started, begun = time.perf_counter(), time.monotonic()
                try:
                    response = session.post(url + "/api/search", files={"image": (photo.name, photo.read_bytes())},
                                            data={"k": str(args.k)})
                    status = str(response.status_code)
                    if response.status_code == 200:
                        with lock:
                            searches.append((begun, [h["id"] for h in response.json()["results"]]))
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                record("search", started, status)

    def in_parallel(target, parts) -> float:
        threads = [threading.Thread(target=target, args=(part,)) for part in parts]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    search_threads = [threading.Thread(target=searcher, args=(args.seed + i,)) for i in range(args.clients[0])]
    for thread in search_threads:
        thread.start()
    numbers = list(range(args.writes))
    add_wall = in_parallel(writer, [numbers[i::args.write_clients] for i in range(args.write_clients)])
    victims = random.Random(args.seed).sample(sorted(added.values()), len(added) // 2)
    delete_wall = in_parallel(deleter, [victims[i::args.write_clients] for i in range(args.write_clients)])
    time.sleep(1.0)  # searches after the last delete, checked too
    done.set()
    for thread in search_threads:
        thread.join()

    # Against the store on disk: every acknowledged add there once, every acknowledged delete gone.
    store = FeatureStore.open(args.index)
    rows = {it.id: it.record.item_id for it in store.items()}
    live = set(store.live_ids().tolist())
    item_ids = [rows[i] for i in rows if i not in original and rows[i] and rows[i].startswith("load-")]
    doubled = sum(n - 1 for n in Counter(item_ids).values() if n > 1)
    lost = [name for name, i in added.items() if rows.get(i) != name or (i not in live and i not in deleted_at)]
    still_live = [i for i in deleted_at if i in live]
    expected_live = original | (set(added.values()) - set(deleted_at))
    stale = sum(1 for begun, ids in searches for i in ids if i in deleted_at and begun > deleted_at[i])

    def pct(kind: str, p: float) -> float:
        ordered = sorted(latencies[kind])
        return round(percentile(ordered, p), 1) if ordered else float("nan")

    return {
        "url": url, "writes": args.writes, "write_clients": args.write_clients, "search_clients": args.clients[0],
        "adds_acknowledged": len(added), "adds_per_s": round(len(added) / add_wall, 2),
        "deletes_acknowledged": len(deleted_at), "deletes_per_s": round(len(deleted_at) / delete_wall, 2),
        "add_p50_ms": pct("add", 50), "add_p99_ms": pct("add", 99),
        "delete_p50_ms": pct("delete", 50), "delete_p99_ms": pct("delete", 99),
        "searches": len(searches), "search_p50_ms": pct("search", 50), "search_p99_ms": pct("search", 99),
        "errors": sum(n for status, n in outcomes.items() if not status.endswith((" 200", " 201"))),
        "outcomes": dict(sorted(outcomes.items())),
        "store_check": {"lost_adds": len(lost), "doubled_adds": doubled, "deleted_but_live": len(still_live),
                        "live_as_expected": live == expected_live, "verify_ok": store.verify(full=True).ok},
        "deleted_item_returned_after_its_delete": stale,
        "load_average": [round(v, 2) for v in os.getloadavg()], "workers": args.workers,
    }


def index_backend(index: Path) -> str:
    """The backend recorded in an index folder's manifest (exact when none is recorded)."""
    manifest = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
    return manifest.get("index_backend") or "exact"


def print_table(runs: list[dict]) -> None:
    first = runs[0]
    on = f" ({first['backend']} backend" + (f", {first['workers']} workers" if (first["workers"] or 1) > 1 else "") \
        + ")" if first["backend"] else ""
    print(f"{first['mode']} searches (k={first['k']}, {first['requests']} per row) against {first['url']}{on}; "
          f"load average {first['load_average'][0]:.1f} at the start of the first row")
    print("| clients | requests/s | x first row | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU ms/request |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        ratio = run["requests_per_s"] / first["requests_per_s"]
        print(f"| {run['clients']} | {run['requests_per_s']:.1f} | {ratio:.2f} "
              f"| {run['p50_ms']:.0f} | {run['p90_ms']:.0f} | {run['p99_ms']:.0f} | {run['max_ms']:.0f} | "
              f"{run['errors']} | {run.get('server_cpu_ms_per_request', '')} |")
    last = runs[-1]
    if "server_memory" in last:
        memory = last["server_memory"]
        print(f"server memory after the last row: RSS {memory['rss_mib']:.0f} MiB, PSS {memory['pss_mib']:.0f} MiB, "
              f"peak RSS {memory['peak_rss_mib']:.0f} MiB (summed over its processes)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra = [arg for option in args.backend_option for arg in ("--backend-option", option)] + list(args.server_arg)
    if args.workers > 1:
        extra += ["--workers", str(args.workers)]
    key = secrets.token_urlsafe(24)
    env = {"CLOTHSIM_API_KEY": key} if args.writes else None
    if args.writes:
        extra += ["--writes"]
    server = LocalServer(args.index, args.startup_timeout, extra, env) if args.url is None else None
    url = server.url if server else args.url.rstrip("/")
    try:
        if args.writes:
            summary: dict | list = run_writes(args, url, key, photo_paths(args))
            if server is not None:
                summary["server_memory"] = memory_mib(server.pids())
        else:
            photos = query_photos(args) if args.mode != "id" else []
            ids = item_ids(args, url) if args.mode != "upload" else []
            summary = [run_load(args, url, clients, photos, ids, server) for clients in args.clients]
    finally:
        if server is not None:
            server.stop()
            log = server.output_text
    if args.json:
        print(json.dumps(summary[0] if isinstance(summary, list) and len(summary) == 1 else summary, indent=2))
    elif isinstance(summary, dict):
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    if isinstance(summary, dict):
        check = summary["store_check"]
        bad = summary["errors"] or summary["deleted_item_returned_after_its_delete"] or check["lost_adds"] \
            or check["doubled_adds"] or check["deleted_but_live"] or not check["live_as_expected"] \
            or not check["verify_ok"]
    else:
        bad = any(run["errors"] for run in summary)
    if bad and server is not None:
        print(f"the server's last output:\n{log}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

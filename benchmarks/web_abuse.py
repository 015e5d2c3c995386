"""Abuse of ``clothsim serve`` as a hostile client would try it, on loopback only, bounded in size.

Starts ``clothsim serve`` on 127.0.0.1 (a free port) with a stated memory budget, over ``--index`` or over
an index of the bundled clothing sample built first with the default encoder, then in turn:

1. slow headers: connections that send half a request line and stall;
2. slow bodies: connections that declare a 10 MB upload, send its first bytes and stall;
3. oversized uploads (over the upload limit) and decompression bombs (a few KB, 81 megapixels);
4. concurrent clients each sending 64-megapixel JPEG photos (the largest the server accepts).

For each it prints the status codes, errors, latency p50/p99 and how long the server held slow clients,
and at the end the server's peak resident memory (VmHWM) next to its budget.

    .venv/bin/python benchmarks/web_abuse.py --memory-budget-mb 2048
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import httpx
except ImportError as exc:  # pragma: no cover - a script run by hand
    raise SystemExit(f"the abuse script needs httpx: pip install httpx ({exc})") from exc

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "clothsim" / "assets" / "clothing_sample" / "train"
CLOTHSIM = Path(sys.executable).with_name("clothsim")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_of(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def jpeg_64mp(seed: int) -> bytes:
    """An 8000 x 8000 photo-like JPEG (smooth gradients and some noise), a few MB."""
    side = 8000
    rng = np.random.default_rng(seed)
    x = np.arange(side, dtype=np.uint16)
    base = ((x[None, :] + x[:, None] * (seed + 1)) // 40 % 256).astype(np.uint8)
    noise = rng.integers(0, 24, (side, side), dtype=np.uint8)
    image = Image.fromarray(np.stack([base, base[::-1] // 2 + noise, base.T], axis=-1))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 9000), 0).save(buf, "PNG")  # 81 MP in a few KB
    return buf.getvalue()


def slow_clients(port: int, n: int, payload: bytes, wait_s: float) -> dict:
    """Open ``n`` connections, send ``payload`` and stall; time until the server closes each."""
    socks, opened = [], time.monotonic()
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(payload)
        sock.settimeout(0.05)
        socks.append([sock, None, b""])
    deadline = opened + wait_s
    while time.monotonic() < deadline and any(s[1] is None for s in socks):
        for entry in socks:
            if entry[1] is not None:
                continue
            try:
                chunk = entry[0].recv(4096)
                if not chunk:
                    entry[1] = time.monotonic() - opened
                entry[2] += chunk
            except socket.timeout:
                pass
            except ConnectionResetError:
                entry[1] = time.monotonic() - opened
    codes = Counter(entry[2][9:12].decode() or "closed" for entry in socks)
    held = [entry[1] for entry in socks if entry[1] is not None]
    for entry in socks:
        entry[0].close()
    return {"connections": n, "dropped": len(held), "still_open_after_s": wait_s if len(held) < n else None,
            "held_p50_s": percentile(held, 50), "held_max_s": max(held) if held else None, "codes": dict(codes)}


def uploads(url: str, payloads: list[bytes], clients: int, name: str) -> dict:
    """Post every payload as an upload from ``clients`` threads; status codes and latency."""
    latencies, codes, errors, details = [], Counter(), Counter(), {}
    lock = threading.Lock()

    def one(data: bytes) -> None:
        started = time.perf_counter()
        try:
            with httpx.Client(timeout=300) as client:
                response = client.post(f"{url}/api/search", files={"image": (name, data, "image/jpeg")},
                                       data={"k": "5"})
            code = str(response.status_code)
            if response.status_code == 503:
                code += f" (Retry-After {response.headers.get('retry-after')})"
        except httpx.HTTPError as exc:
            with lock:
                errors[type(exc).__name__] += 1
            return
        with lock:
            codes[code] += 1
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200 and code not in details:
                details[code] = response.text[:160]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, payloads))
    return {"requests": len(payloads), "clients": clients, "codes": dict(codes), "errors": dict(errors),
            "details": details,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="an index folder (default: build one of the bundled sample)")
    parser.add_argument("--memory-budget-mb", type=float, default=2048, help="as `clothsim serve` (default 2048)")
    parser.add_argument("--slow", type=int, default=50, help="slow connections per slow-client test")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients sending 64 MP photos")
    parser.add_argument("--rounds", type=int, default=2, help="64 MP photos per client")
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--body-timeout", type=float, default=60.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        index = args.index
        if index is None:
            index = Path(tmp) / "index"
            subprocess.run([str(CLOTHSIM), "-q", "index", str(SAMPLE), "--out", str(index)], check=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [str(CLOTHSIM), "serve", "--index", str(index), "--host", "127.0.0.1", "--port", str(port),
             "--memory-budget-mb", str(args.memory_budget_mb), "--header-timeout", str(args.header_timeout),
             "--body-timeout", str(args.body_timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited: {server.stdout.read()}")
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
            at_start = status_of(server.pid)
            results: dict[str, dict] = {}
            results["slow headers"] = slow_clients(port, args.slow, b"POST /api/search HTTP/1.1\r\nHost: x\r\n",
                                                   args.header_timeout + 10)
            results["slow bodies (10 MB declared, then nothing)"] = slow_clients(
                port, args.slow, b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                                 b"boundary=b\r\nContent-Length: 10000000\r\n\r\n--b\r\n", min(args.body_timeout, 15) + 10)
            big = os.urandom(25 * 1024 * 1024)
            results["oversized uploads (25 MB)"] = uploads(url, [big] * 8, 4, "big.jpg")
            results["decompression bombs (81 MP PNG)"] = uploads(url, [bomb()] * 8, 4, "bomb.png")
            photos = [jpeg_64mp(seed) for seed in range(4)]
            print(f"64 MP JPEGs: {[round(len(p) / 2**20, 1) for p in photos]} MiB", flush=True)
            results[f"{args.clients} clients x {args.rounds} photos of 64 MP"] = uploads(
                url, [photos[i % len(photos)] for i in range(args.clients * args.rounds)], args.clients, "big.jpg")
            results["a normal upload afterwards"] = uploads(url, [(SAMPLE / "dress").iterdir().__next__().read_bytes()],
                                                            1, "dress.jpg")
            final = status_of(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    peak = final["VmHWM"] / 2**20
    print(json.dumps({"results": results, "rss_at_start_mib": at_start["VmRSS"] / 2**20, "peak_rss_mib": peak,
                      "budget_mib": args.memory_budget_mb}, indent=1))
    print(f"\nserver RSS at start {at_start['VmRSS'] / 2**20:.0f} MiB, peak {peak:.0f} MiB, "
          f"budget {args.memory_budget_mb:.0f} MiB: {'under' if peak <= args.memory_budget_mb else 'OVER'} the budget")
    print("| abuse | requests | status codes | p50 | p99 | errors |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        if "connections" in r:
            print(f"| {name} | {r['connections']} connections | {r['codes']} | dropped {r['dropped']}, after "
                  f"{r['held_p50_s']:.1f} s (max {r['held_max_s']:.1f} s) | | |")
        else:
            print(f"| {name} | {r['requests']} from {r['clients']} clients | {r['codes']} | {r['p50_s']:.2f} s "
                  f"| {r['p99_s']:.2f} s | {r['errors'] or 0} |")


if __name__ == "__main__":
    main()

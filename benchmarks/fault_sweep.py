"""The long fault-injection sweep: kill -9, a full disk, damage and two writers, over every index backend.

For each backend (exact, faiss-hnsw, faiss-ivfpq, milvus) it runs the real ``clothsim index`` command over
real photos (``../shared/data/clothing-dataset-small``) and checks, case by case:

* **kill** at every durable step (``clothsim.fileio`` traces them) of a first build, a sync (photos added,
  removed, re-shot, relabelled) and an ``--overwrite``, and at ``--random-kills`` random moments of each:
  what the kill leaves is the previous index, the new one, or an unfinished one that readers refuse
  (never a damaged one); the same command run again then gives exactly the uninterrupted result: the
  same rows and vectors, a backend that verifies, covers the store and answers as exact search does, and
  nothing left beside the folder;
* **enospc** at every data write of the same runs: one clear error (never a traceback), then the same;
* **damage**: 64 random bytes inside, or the end cut off, every kind of file in the index folder (the
  manifest, vectors, row checksums, metadata, tombstones, the backend's state and engine files): ``search``
  and ``verify`` refuse it, and the command the error names repairs it; plus, for a store over 64 MiB
  (which opening does not hash), swapped, zeroed and scribbled rows under exact and HNSW search;
* **writers**: a second ``clothsim index`` while a first (``--overwrite``, or a sync) is stopped in the
  middle is refused at once and changes nothing; the first then finishes exactly.

The encoder is a deterministic 8x8 thumbnail (``tests/_tiny_encoders.py``): this sweeps the storage and
the backends, not the networks, and keeps each case to a fork and a fraction of a second. Each case runs
in a child forked from a server that imported clothsim once (as ``tests/test_crash_consistency.py``
does). Prints cases tried / passed / failed per backend and kind, and the first failures in full::

    .venv/bin/python benchmarks/fault_sweep.py                      # everything (about an hour on 2 cores)
    .venv/bin/python benchmarks/fault_sweep.py --backends exact --kinds kill,damage --every 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["_fault_child"])

from clothsim.features.store import FeatureStore, StoreIntegrityError, UnfinishedStoreError  # noqa: E402
from clothsim.features.writer_lock import lock_path  # noqa: E402
from clothsim.fileio import FAULT_AT_ENV, FAULT_KIND_ENV, FAULT_MATCH_ENV, FAULT_TRACE_ENV  # noqa: E402

BACKENDS = ("exact", "faiss-hnsw", "faiss-ivfpq", "milvus")
KINDS = ("kill", "enospc", "damage", "writers")
SCENARIOS = ("build", "sync", "overwrite")
COMMON = ["--runtime", "torch", "--workers", "0", "--checkpoint-every", "4"]
DATA_WRITES = ("write ", "write-middle ")


class CaseFailed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CaseFailed(message)


# ----- children --------------------------------------------------------------------------------------------
def child(argv: list[str], work: Path, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    import _fault_child

    log = work / f"child-{time.monotonic_ns()}.log"
    process = CTX.Process(target=_fault_child.run_cli, args=(argv, env or {}, str(log)))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise CaseFailed(f"`clothsim {' '.join(argv)}` hung")
    text = log.read_text(errors="replace") if log.exists() else ""
    log.unlink(missing_ok=True)
    code = process.exitcode
    process.close()  # its semaphore goes now, not in a warning at exit
    return code, text


def started(argv: list[str], work: Path, env: dict[str, str]):
    import _fault_child

    log = work / f"child-{time.monotonic_ns()}.log"
    process = CTX.Process(target=_fault_child.run_cli, args=(argv, env, str(log)))
    process.start()
    return process, log


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


# ----- what an index holds --------------------------------------------------------------------------------
def snapshot(root: Path) -> dict:
    """Live rows (record and exact vector bytes), tombstones, failures, fingerprint: what a user sees."""
    store = FeatureStore.open(root, verify=True)
    rows = {}
    for ids, block in store.iter_blocks():
        for i, vec, rec in zip(ids, np.asarray(block), store.records_for(ids)):
            rows[int(i)] = (repr(rec.to_dict()), hashlib.sha256(np.ascontiguousarray(vec).tobytes()).hexdigest())
    return {"rows": rows, "deleted": store.deleted_ids.tolist(), "fingerprint": repr(store.fingerprint),
            "failures": sorted((f["path"], f["reason"]) for f in store.failures)}


def visible_rows(root: Path) -> set:
    store = FeatureStore.open(root, allow_unfinished=True, verify=True)
    out = set()
    for ids, block in store.iter_blocks():
        for rec, vec in zip(store.records_for(ids), np.asarray(block)):
            out.add((repr(rec.to_dict()), hashlib.sha256(np.ascontiguousarray(vec).tobytes()).hexdigest()))
    return out


def check_backend(root: Path, backend: str) -> None:
    """The backend verifies, covers the whole store and answers as exact search does."""
    from clothsim.index import open_index
    from clothsim.index.exact import ExactIndex
    from clothsim.index.registry import check_backends

    store = FeatureStore.open(root, verify=True)
    problems = [p for c in check_backends(store) for p in c.problems]
    expect(not problems, f"the backend does not verify: {problems}")
    expect(store.manifest.get("index_backend", "exact") == backend, "another backend is recorded")
    index = open_index(store)
    try:
        if backend != "exact":
            expect(int(index.state["covered_next_id"]) == int(store.manifest["next_id"]),
                   f"the {backend} index does not cover the store ({index.state['covered_next_id']} of "
                   f"{store.manifest['next_id']})")
        ids = store.live_ids()[:: max(1, len(store) // 5)][:5]
        queries = store.vectors_for(ids)
        found = [[h.id for h in row] for row in index.search(queries, 5)]
        truth = [[h.id for h in row] for row in ExactIndex(store).search(queries, 5)]
        expect(found == truth, f"{backend} answers {found}, exact search {truth}")
    finally:
        close = getattr(index, "close", None)
        if close:
            close()


def nothing_beside(root: Path) -> None:
    siblings = sorted(p.name for p in root.parent.iterdir() if p.name.startswith(root.name + "."))
    expect(siblings == [], f"left beside the index: {siblings}")
    expect(not lock_path(root).exists(), "the writer lock file was left")
    report = FeatureStore.open(root).verify()
    expect(report.ok and not report.leftovers, f"after a clean run: {report.problems} {report.leftovers}")


# ----- catalogues ------------------------------------------------------------------------------------------
def make_catalogues(base: Path, photos: Path) -> dict:
    """``before`` (16 photos) and ``after`` (3 gone, 2 re-shot, 1 relabelled, 4 new) as CSV catalogues."""
    import csv

    from PIL import Image

    images = base / "images"
    images.mkdir(parents=True)
    sources = []
    for category in ("dress", "shoes", "hat", "pants"):
        sources += sorted((photos / "train" / category).iterdir())[:5]
    for n, source in enumerate(sources[:20]):
        shutil.copy2(source, images / f"{n:02d}.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")

    def write(name: str, rows: list[tuple[str, str]]) -> Path:
        path = base / name
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "category"])
            writer.writerows(rows)
        return path

    category = {n: "abcd"[n % 4] for n in range(20)}
    before = [(str(images / f"{n:02d}.jpg"), category[n]) for n in range(16)] + [(str(images / "broken.jpg"), "a")]
    after = [(p, "z" if p.endswith("05.jpg") else c) for p, c in before if not p.endswith(("00.jpg", "01.jpg", "02.jpg"))]
    after += [(str(images / f"{n:02d}.jpg"), "new") for n in range(16, 20)]
    catalogues = {"before": write("before.csv", before), "after": write("after.csv", after), "images": images}
    # Two photos are re-shot between the 'before' index and the sync: other pixels, a later mtime.
    versions: dict[str, list[tuple[Path, bytes, int]]] = {"old": [], "new": []}
    for n, name in enumerate(("03.jpg", "04.jpg")):
        path = images / name
        versions["old"].append((path, path.read_bytes(), path.stat().st_mtime_ns))
        with Image.open(path) as img:
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, quality=80 + n)
        versions["new"].append((path, path.read_bytes(), 2_000_000_000_000_000_000 + n))

    def photos_as(version: str) -> None:
        for path, data, mtime in versions[version]:
            path.write_bytes(data)
            os.utime(path, ns=(mtime, mtime))

    catalogues["photos_as"] = photos_as
    photos_as("new")
    return catalogues


def index_argv(catalogue: Path, out: Path, backend: str, encoder: str = "test-thumb8", *extra: str) -> list[str]:
    return ["-q", "index", str(catalogue), "--out", str(out), "--encoder", encoder, "--backend", backend,
            *COMMON, *extra]


# ----- the sweep ------------------------------------------------------------------------------------------
class Sweep:
    def __init__(self, work: Path, catalogues: dict, args: argparse.Namespace) -> None:
        self.work = work
        self.catalogues = catalogues
        self.args = args
        self.counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.failures: list[str] = []
        self.rng = random.Random(args.seed)

    def case(self, backend: str, kind: str, label: str, fn) -> None:
        counts = self.counts[(backend, kind)]
        counts[0] += 1
        try:
            fn()
        except Exception as exc:  # a failed case is reported, and the sweep goes on
            counts[1] += 1
            detail = str(exc) if isinstance(exc, CaseFailed) else traceback.format_exc(limit=6)
            self.failures.append(f"{backend} / {kind} / {label}: {detail}")
            print(f"  FAILED {backend} / {kind} / {label}: {detail.splitlines()[0][:300]}", flush=True)

    # ----- starting states and references ----------------------------------------------------------
    def prepare(self, backend: str) -> dict:
        """Per scenario: the starting index (or None), the argv, and the uninterrupted result."""
        root = self.work / backend / "reference"
        root.mkdir(parents=True)
        c = self.catalogues
        states = {}
        before = root / "before"
        c["photos_as"]("old")
        code, log = child(index_argv(c["before"], before, backend), root)
        c["photos_as"]("new")
        expect(code == 0, log)
        thumb4 = root / "thumb4"
        code, log = child(index_argv(c["after"], thumb4, backend, "test-thumb4"), root)
        expect(code == 0, log)
        scenarios = {
            "build": (None, lambda out: index_argv(c["after"], out, backend)),
            "sync": (before, lambda out: index_argv(c["after"], out, backend)),
            "overwrite": (thumb4, lambda out: index_argv(c["after"], out, backend, "test-thumb8", "--overwrite")),
        }
        for name, (start, argv_for) in scenarios.items():
            ref = root / f"{name}-result"
            if start is not None:
                shutil.copytree(start, ref)
            trace = root / f"{name}.trace"
            code, log = child(argv_for(ref), root, {FAULT_TRACE_ENV: str(trace)})
            expect(code == 0, log)
            check_backend(ref, backend)
            steps = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
            states[name] = {"start": start, "argv_for": argv_for, "reference": snapshot(ref), "steps": steps,
                            "previous": snapshot(start) if start is not None else None,
                            "old_rows": visible_rows(start) if start is not None else set(),
                            "new_rows": visible_rows(ref), "result": ref}
        return states

    def fresh(self, backend: str, start: Path | None) -> Path:
        case = self.work / backend / "case"
        if case.exists():
            shutil.rmtree(case)
        case.mkdir(parents=True)
        target = case / "index"
        if start is not None:
            shutil.copytree(start, target)
        return target

    def left_state(self, target: Path, state: dict, label: str) -> None:
        """After a fault: the previous index, the new one, or an unfinished one readers refuse."""
        if not FeatureStore.exists(target):
            expect(state["start"] is None or any(target.parent.glob(target.name + ".*")),
                   f"{label}: the index vanished with nothing to recover it from")
            return
        try:
            found = snapshot(target)
        except UnfinishedStoreError:
            allowed = state["new_rows"] | state["old_rows"]
            expect(visible_rows(target) <= allowed, f"{label}: rows of no state are visible")
            return
        except StoreIntegrityError as exc:
            raise CaseFailed(f"{label}: the fault left a damaged index: {exc}") from None
        expect(found in [s for s in (state["previous"], state["reference"]) if s is not None],
               f"{label}: a committed state that is neither the old nor the new index")

    def rerun(self, backend: str, target: Path, state: dict, label: str) -> None:
        code, log = child(state["argv_for"](target), target.parent)
        expect(code == 0, f"{label}: the same command again failed: {log[-800:]}")
        expect(snapshot(target) == state["reference"], f"{label}: the re-run did not give the uninterrupted result")
        check_backend(target, backend)
        nothing_beside(target)

    # ----- kinds ---------------------------------------------------------------------------------
    def kills(self, backend: str, states: dict) -> None:
        for name in self.args.scenarios:
            state = states[name]
            steps = list(range(1, len(state["steps"]) + 1))[:: self.args.every]
            print(f"  {backend} {name}: kill at {len(steps)} of {len(state['steps'])} steps, "
                  f"{self.args.random_kills} at random", flush=True)
            for step in steps:
                self.case(backend, "kill", f"{name} step {step} ({state['steps'][step - 1]})",
                          lambda step=step: self._kill_at(backend, state, step, f"{name} step {step}"))
            for n in range(self.args.random_kills):
                self.case(backend, "kill", f"{name} random #{n}", lambda: self._kill_random(backend, state, name))

    def _kill_at(self, backend: str, state: dict, step: int, label: str) -> None:
        target = self.fresh(backend, state["start"])
        code, log = child(state["argv_for"](target), target.parent, {FAULT_AT_ENV: str(step), FAULT_KIND_ENV: "kill"})
        expect(code == -9, f"{label}: expected SIGKILL, got {code}: {log[-500:]}")
        self.left_state(target, state, label)
        self.rerun(backend, target, state, label)

    def _kill_random(self, backend: str, state: dict, name: str) -> None:
        target = self.fresh(backend, state["start"])
        process, log = started(state["argv_for"](target), target.parent, {})
        delay = self.rng.uniform(0.05, self.args.random_window)
        time.sleep(delay)
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
        process.join(300)
        label = f"{name} random kill after {delay:.2f} s"
        self.left_state(target, state, label)
        self.rerun(backend, target, state, label)

    def full_disks(self, backend: str, states: dict) -> None:
        for name in self.args.scenarios:
            state = states[name]
            steps = [n for n, step in enumerate(state["steps"], 1) if step.startswith(DATA_WRITES)]
            print(f"  {backend} {name}: a full disk at {len(steps)} data writes", flush=True)
            for step in steps:
                self.case(backend, "enospc", f"{name} step {step} ({state['steps'][step - 1]})",
                          lambda step=step: self._full_disk_at(backend, state, step, f"{name} step {step}"))

    def _full_disk_at(self, backend: str, state: dict, step: int, label: str) -> None:
        target = self.fresh(backend, state["start"])
        code, log = child(state["argv_for"](target), target.parent, {FAULT_AT_ENV: str(step), FAULT_KIND_ENV: "enospc"})
        expect(code in (0, 1), f"{label}: exit {code}: {log[-500:]}")
        expect("Traceback" not in log, f"{label}: a traceback instead of a message:\n{log[-1500:]}")
        if code == 1:
            expect("No space left on device" in log and "clothsim index: error:" in log, f"{label}: {log[-500:]}")
        self.left_state(target, state, label)
        self.rerun(backend, target, state, label)

    def damages(self, backend: str, states: dict) -> None:
        result = states["sync"]["result"]  # has tombstones, failures, several segments and the backend's files
        files = sorted(p for p in result.rglob("*") if p.is_file() and p.name != "LOCK")
        kinds: dict[str, Path] = {}
        for path in files:
            kinds.setdefault(file_kind(path), path)
        print(f"  {backend}: damage to {len(kinds)} kinds of file: {', '.join(sorted(kinds))}", flush=True)
        for kind, path in sorted(kinds.items()):
            for how in ("random bytes", "cut short"):
                self.case(backend, "damage", f"{kind} ({path.name}): {how}",
                          lambda path=path, how=how: self._damage(backend, states["sync"], result, path, how))

    def _damage(self, backend: str, state: dict, result: Path, path: Path, how: str) -> None:
        target = self.fresh(backend, result)
        damaged = target / path.relative_to(result)
        data = bytearray(damaged.read_bytes())
        if how == "random bytes":
            middle = len(data) // 2
            data[middle:middle + 64] = self.rng.randbytes(min(64, len(data) - middle))
        else:
            data = data[: max(0, len(data) - max(1, len(data) // 10))]
        damaged.write_bytes(bytes(data))
        query = str(sorted(self.catalogues["images"].iterdir())[5])
        code, out = child(["search", query, "--index", str(target), "--runtime", "torch", "--json"], target.parent)
        served = code == 0
        vcode, vout = child(["verify", str(target)], target.parent)
        if served:
            # Answered: then nothing a search reads may have changed (a file the engine does not read back,
            # such as Milvus Lite's previous manifest): the index must still verify and answer exactly.
            expect(vcode == 0, f"damaged {damaged.name} ({how}) was served while verify finds it:\n{vout[-400:]}")
            expect(snapshot(target) == snapshot(result), f"damaged {damaged.name} ({how}) was served")
            check_backend(target, backend)
            return
        expect("Traceback" not in out, f"a traceback:\n{out[-1500:]}")
        expect(vcode == 1, f"search refused it but verify says ok:\n{vout[-500:]}")
        message = out + vout
        found = re.search(r"`clothsim (index [^`]+)`", message)
        expect(found is not None, f"no repair command named: {message[-600:]}")
        argv = ["-q", *found.group(1).replace("DATA", str(state_catalogue(self.catalogues)))
                .replace("CATALOGUE", str(state_catalogue(self.catalogues))).split(),
                "--encoder", "test-thumb8", *COMMON]
        if "--backend" not in argv:
            argv += ["--backend", backend]
        code, log = child(argv, target.parent)
        expect(code == 0, f"the named repair `{' '.join(argv)}` failed: {log[-800:]}")
        code, out = child(["search", query, "--index", str(target), "--runtime", "torch", "--json"], target.parent)
        expect(code == 0 and len(json.loads(out[out.index("["):])[0]["results"]) == 5, f"search after repair: {out[-500:]}")
        # Repaired rows are encoded again under new ids: the same records and vectors, not the same ids.
        expect(visible_rows(target) == state["new_rows"], "the repaired index does not hold the catalogue's rows")
        check_backend(target, backend)

    def writers(self, backend: str, states: dict) -> None:
        for first, second in (("overwrite", "sync"), ("sync", "overwrite")):
            self.case(backend, "writers", f"{first} running, {second} refused",
                      lambda first=first, second=second: self._two_writers(backend, states, first, second))

    def _two_writers(self, backend: str, states: dict, first: str, second: str) -> None:
        state = states[first]
        target = self.fresh(backend, state["start"])
        env = {FAULT_AT_ENV: "2", FAULT_KIND_ENV: "stop", FAULT_MATCH_ENV: "rename manifest.json"}
        process, log = started(state["argv_for"](target), target.parent, env)
        deadline = time.monotonic() + 120
        while not stopped(process.pid):
            expect(process.is_alive() and time.monotonic() < deadline, f"the first writer never stopped: "
                   f"{log.read_text(errors='replace')[-500:] if log.exists() else ''}")
            time.sleep(0.05)
        try:
            tree = {str(p): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()}
            second_argv = states[second]["argv_for"](target) if second == "overwrite" else \
                index_argv(self.catalogues["after"], target, backend)
            code, out = child(second_argv, target.parent, timeout=60)
            expect(code == 1 and "being written by another process" in out, f"the second writer was not refused: "
                   f"{code} {out[-500:]}")
            expect(tree == {str(p): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()},
                   "the refused writer changed files")
        finally:
            os.kill(process.pid, signal.SIGCONT)
            process.join(300)
        expect(process.exitcode == 0, f"the first writer failed: {log.read_text(errors='replace')[-500:]}")
        expect(snapshot(target) == state["reference"], "the first writer's result changed")
        check_backend(target, backend)
        nothing_beside(target)

    def large_store(self) -> None:
        """A store over 64 MiB (not hashed at open): damaged rows are refused by exact and HNSW search."""
        from clothsim.data.records import CatalogRecord
        from clothsim.index import build_index, open_index
        from clothsim.index.exact import ExactIndex

        root = self.work / "large" / "pristine"
        rng = np.random.default_rng(0)
        store = FeatureStore.create(root, {"encoder": "big", "weights": "none", "dim": 1280, "preprocessing": None})
        x = rng.normal(size=(13_200, 1280)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.append(x, [CatalogRecord(f"/p/{i}.jpg", "ab"[i % 2]) for i in range(len(x))])
        build_index(FeatureStore.open(root), "faiss-hnsw", M=8, efConstruction=40, category_graphs=False)
        damages = {
            "swapped rows": lambda a: a.__setitem__([10, 20], a[[20, 10]]),
            "zeroed row": lambda a: a.__setitem__(10, 0),
            "random bytes in a row": lambda a: a.view(np.uint8).__setitem__(
                (10, slice(600, 664)), np.frombuffer(self.rng.randbytes(64), np.uint8)),
        }
        for backend in ("exact", "faiss-hnsw"):
            for name, damage in damages.items():
                self.case(backend, "damage", f"store over 64 MiB: {name}",
                          lambda damage=damage, backend=backend: self._large(root, x, damage, backend))

    def _large(self, pristine: Path, x: np.ndarray, damage, backend: str) -> None:
        from clothsim.index import open_index
        from clothsim.index.exact import ExactIndex

        root = self.work / "large" / "case"
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(pristine, root)
        path = FeatureStore.open(root, verify=False).segments[0].vectors_path
        array = np.load(path, mmap_mode="r+")
        damage(array)
        array.flush()
        del array
        store = FeatureStore.open(root)
        index = ExactIndex(store) if backend == "exact" else open_index(store)
        try:
            hits = index.search(x[10][None, :], 3)
        except StoreIntegrityError:
            return
        raise CaseFailed(f"a damaged row was served: {[(h.id, h.score) for h in hits[0]]}")

    # ----- report -------------------------------------------------------------------------------
    def report(self, seconds: float) -> int:
        print(f"\n{'backend':<12} {'kind':<8} {'tried':>6} {'passed':>7} {'failed':>7}")
        total = [0, 0]
        for (backend, kind), (tried, failed) in sorted(self.counts.items()):
            print(f"{backend:<12} {kind:<8} {tried:>6} {tried - failed:>7} {failed:>7}")
            total[0] += tried
            total[1] += failed
        print(f"{'all':<12} {'':<8} {total[0]:>6} {total[0] - total[1]:>7} {total[1]:>7}   ({seconds / 60:.1f} min)")
        for failure in self.failures[:10]:
            print(f"\n{failure}")
        return 1 if total[1] else 0


def state_catalogue(catalogues: dict) -> Path:
    return catalogues["after"]


def file_kind(path: Path) -> str:
    """What kind of file of an index folder ``path`` is, e.g. ``segment vectors`` or ``faiss-hnsw graph``."""
    name = path.name
    parts = path.parts
    if "backends" in parts:
        backend = parts[parts.index("backends") + 1]
        if name == "state.json":
            return f"{backend} state"
        if backend == "milvus":
            return "milvus " + ("index file" if name.endswith(".idx") else "data file" if name.endswith(".parquet")
                                else "manifest" if name.startswith("manifest") else name)
        return f"{backend} " + ("category graph" if name.startswith("part-") else "graph" if backend == "faiss-hnsw"
                                else "lists")
    if name == "manifest.json":
        return "manifest"
    for suffix, kind in ((".rowsums.npy", "row checksums"), (".deleted.npy", "tombstones"), (".npy", "vectors"),
                         (".parquet", "metadata")):
        if name.endswith(suffix):
            return f"segment {kind}"
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), type=lambda s: s.split(","))
    parser.add_argument("--every", type=int, default=1, help="kill at every N-th durable step (default every one)")
    parser.add_argument("--random-kills", type=int, default=3, help="kills at random moments per scenario")
    parser.add_argument("--random-window", type=float, default=6.0, help="seconds within which a random kill falls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "clothing-dataset-small")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if not args.photos.is_dir():
        parser.error(f"real photos not found at {args.photos}")
    backends = [b for b in args.backends.split(",") if b]
    kinds = set(args.kinds.split(","))
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # fsync is free in memory
    work = Path(tempfile.mkdtemp(prefix="clothsim-sweep-", dir=base))
    started_at = time.perf_counter()
    try:
        sweep = Sweep(work, make_catalogues(work / "catalogue", args.photos), args)
        for backend in backends:
            print(f"{backend}: preparing the reference runs", flush=True)
            try:
                states = sweep.prepare(backend)
            except CaseFailed as exc:
                sweep.counts[(backend, "prepare")][0] += 1
                sweep.counts[(backend, "prepare")][1] += 1
                sweep.failures.append(f"{backend} / prepare: {exc}")
                continue
            if "kill" in kinds:
                sweep.kills(backend, states)
            if "enospc" in kinds:
                sweep.full_disks(backend, states)
            if "damage" in kinds:
                sweep.damages(backend, states)
            if "writers" in kinds:
                sweep.writers(backend, states)
        if "damage" in kinds:
            print("store over 64 MiB: damaged rows", flush=True)
            sweep.large_store()
        return sweep.report(time.perf_counter() - started_at)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

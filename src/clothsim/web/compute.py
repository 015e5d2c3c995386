"""The one owner of the server's compute threads: how many there are, and which work runs on them.

Why one owner: a search by id is one small matrix product (a query against every stored row). numpy
hands it to OpenBLAS, whose thread pool is shared by the whole process; when several request threads
call it at once, each waits for the pool and the pool's threads spin against each other on the same
cores. Measured with ``benchmarks/load_test.py`` (docs/serving.md): the server answered fewer requests
per second the more clients it had, every request thread stood in OpenBLAS's ``exec_blas`` (py-spy), and
the same server with OpenBLAS limited to one thread answered more with more clients. So here:

* every BLAS and OpenMP library loaded in the process (numpy's OpenBLAS, FAISS's OpenBLAS and OpenMP) runs
  one thread per call (``threadpoolctl``); parallelism comes from serving several requests at once;
* the CPU work of requests (decoding uploads, ranking) runs on one pool of ``search_threads`` threads,
  as many as the cores this process may use, so a hundred waiting clients never mean a hundred threads
  computing at once; request threads only parse, wait and answer;
* the encoder's own threads (ONNX Runtime's intra-op pool) are sized by :attr:`ThreadPlan.encoder_threads`,
  sleep between batches rather than spin (:func:`own_encoder_threads`), and run one batch at a time
  (:mod:`clothsim.web.batching`).

With ``clothsim serve --workers N`` each process gets its share of the cores (:func:`plan_threads`).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from clothsim.runtimes import default_threads

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ThreadPlan:
    """How one server process uses its cores.

    Attributes:
        cores: Cores this process may use (its share when several worker processes serve).
        search_threads: Threads that run requests' CPU work (decoding, ranking), one BLAS thread each.
        encoder_threads: Intra-op threads of the encoder's runtime, which runs one batch at a time.
    """

    cores: int
    search_threads: int
    encoder_threads: int


def plan_threads(workers: int = 1, cores: int | None = None, encoder_threads: int | None = None) -> ThreadPlan:
    """Split ``cores`` (default: every core this process may run on) between ``workers`` processes.

    Args:
        workers: Server processes sharing the cores.
        cores: Cores to share (default: those this process may run on).
        encoder_threads: The encoder's threads per process, when the user chose them (``--threads``);
            default: the process's share of the cores.

    Raises:
        ValueError: ``workers``, ``cores`` or ``encoder_threads`` below one.
    """
    total = default_threads() if cores is None else int(cores)
    if workers < 1 or total < 1 or (encoder_threads is not None and encoder_threads < 1):
        raise ValueError(f"workers, cores and encoder_threads must be at least 1, got {workers}, {total} and "
                         f"{encoder_threads}")
    share = max(1, total // workers)
    return ThreadPlan(cores=share, search_threads=share, encoder_threads=encoder_threads or share)


def own_encoder_threads(encoder: Any, threads: int) -> bool:
    """Give the encoder's runtime ``threads`` intra-op threads that sleep between batches instead of
    spinning (spinning threads take the cores the request threads need; measured in docs/serving.md).
    Returns whether the encoder's runtime offers that (ONNX Runtime does); others keep their setting."""
    configure = getattr(type(encoder), "use_threads", None)  # the class's: never an instance's fallback lookup
    if configure is None:
        logger.info("encoder %s keeps its runtime's thread setting", getattr(encoder, "name", encoder))
        return False
    configure(encoder, threads, spinning=False)
    return True


def _limit_blas_here() -> None:
    """One thread per BLAS/OpenMP call in the calling thread. OpenBLAS's setting is process-wide; an
    OpenMP runtime keeps one per thread, which is why every pool thread calls this when it starts."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


class ComputeThreads:
    """Runs requests' CPU work on a bounded pool; BLAS and OpenMP limited to one thread per call.

    Create it after the index is open (its libraries, FAISS's among them, are loaded by then, so the limit
    reaches them); :meth:`close` stops the pool and gives the libraries their thread counts back.

    Args:
        plan: How many threads (see :func:`plan_threads`).
    """

    def __init__(self, plan: ThreadPlan) -> None:
        from threadpoolctl import threadpool_limits

        self.plan = plan
        self._limits = threadpool_limits(limits=1)
        self._pool = ThreadPoolExecutor(max_workers=plan.search_threads, thread_name_prefix="clothsim-compute",
                                        initializer=_limit_blas_here)
        self._closed = threading.Event()
        logger.info("compute threads: %d for requests, %d for the encoder, BLAS/OpenMP at 1 thread per call",
                    plan.search_threads, plan.encoder_threads)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the pool and wait for its result (its exception is raised here)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Finish queued work, stop the threads and restore the libraries' own thread counts."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._pool.shutdown(wait=True)
        self._limits.restore_original_limits()


def blas_threads() -> dict[str, int]:
    """Threads each loaded BLAS/OpenMP library would use for a call from this thread (``threadpoolctl``),
    by library file name; what ``/metrics`` and the tests read to see the limit in force."""
    from threadpoolctl import threadpool_info

    return {info["filepath"].rsplit("/", 1)[-1]: int(info["num_threads"]) for info in threadpool_info()}

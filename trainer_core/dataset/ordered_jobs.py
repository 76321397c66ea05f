"""Run jobs on an executor a few at a time and take their results in submission order.

Both the caption stream and the column-cache build cut a big job into chunks whose results must be consumed in
order (captions are written by id; cache arrays are appended by id). Keeping only `ahead` chunks in flight bounds
memory and still keeps every worker busy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future

from ..progress import Progress


class OrderedJobs:
    """`in_order` with its first jobs sent ahead (`fill`) before anyone takes results: a caller that has other
    work first keeps the workers busy meanwhile. Jobs are drawn from `jobs` lazily, when they are sent, so a job
    generator can read state that changes between `fill` and `results`."""

    def __init__(self, pool: Executor, jobs: Iterable[tuple[int, tuple]], ahead: int) -> None:
        self.pool = pool
        self.it = iter(jobs)
        self.ahead = max(1, ahead)
        self.pending: deque[tuple[int, Future]] = deque()

    def fill(self) -> None:
        """Send jobs until `ahead` are in flight (or none is left)."""
        while len(self.pending) < self.ahead:
            nxt = next(self.it, None)
            if nxt is None:
                return
            self.pending.append((nxt[0], self.pool.submit(*nxt[1])))

    def results(self, progress: Progress | None = None, done: int = 0, total: int | None = None) -> Iterator:
        """The results in job order, each followed by sending the next job (see `in_order`)."""
        self.fill()
        while self.pending:
            if progress is not None:
                progress.check_cancelled()
            weight, fut = self.pending.popleft()
            result = fut.result()
            self.fill()
            done += weight
            if progress is not None:
                progress.update(done, total)
            yield result


def in_order(
    pool: Executor,
    jobs: Iterable[tuple[int, tuple]],
    ahead: int,
    progress: Progress | None = None,
    done: int = 0,
    total: int | None = None,
) -> Iterator:
    """Submit `(fn, *args)` of each `(weight, call)` job, at most `ahead` in flight; yield results in job order.

    After each result `progress` (if any) gets the summed weights so far (starting at `done`) out of `total`, and
    a cancel request stops the loop between results (queued jobs are left to the caller's executor to drop).
    """
    return OrderedJobs(pool, jobs, ahead).results(progress, done, total)

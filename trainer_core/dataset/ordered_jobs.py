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
    it = iter(jobs)
    pending: deque[tuple[int, Future]] = deque()
    for weight, call in it:
        pending.append((weight, pool.submit(*call)))
        if len(pending) >= max(1, ahead):
            break
    while pending:
        if progress is not None:
            progress.check_cancelled()
        weight, fut = pending.popleft()
        result = fut.result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt[0], pool.submit(*nxt[1])))
        done += weight
        if progress is not None:
            progress.update(done, total)
        yield result

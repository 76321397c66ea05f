"""A reference build's shard walks, by groups of buckets, started before the selection is known: on two threads
of the build's own process where the compiled walk was built (tar_headers.walk_settled, which releases the GIL),
else in the caption worker processes.

The selection query runs in the build's own process (~0.5 s per million posts) while the caption workers, started
for the captions, would sit idle. A shard's walk does not depend on the selection, and a recipe of any size
takes posts from nearly every shard (a post's shards are those of its bucket, `id % 1000`: a few thousand posts
already touch most buckets). So a big build submits every group's walk as soon as it starts; the locate pass then
takes each group's result in turn, the walks of the groups with no selected post being cancelled first (those
already running finish, and their headers still go to the index). Where nothing was started (no worker
processes: a small DB), `take` walks the group in the calling thread, as the build's threads do.

Why threads for the compiled walk: it costs ~0.35 us per tar member, but sending a walked group back from a
worker process (pickling ~56 bytes per member, the pipe, unpickling) cost half as much again, and the workers
could only start walking once spawned (~0.35 s in), delaying the first captions by the walks' length. Two
threads end the walks of a 1 M-post demo ~0.6 s into the build, one ~1.0 s (the selection runs meanwhile).

The walks are data only: `walk_shards` gets paths, returns numbers (shard_index.WalkedShard), and never executes
or writes anything; the header index (shard_index.ShardIndex) is read and saved by the build's process.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

from .images import BUCKETS, ImageSource
from .shard_index import ShardIndex, WalkedShard, walk_shards
from .tar_headers import COMPILED

# 40 groups for the 1,000 buckets: a numpy pass over a group's headers costs the same fixed ~1 ms for 30 headers
# or 30,000, and 40 jobs still spread evenly over the workers.
BUCKETS_PER_GROUP = 25
GROUPS = -(-BUCKETS // BUCKETS_PER_GROUP)


def group_of(bucket: int) -> int:
    return bucket // BUCKETS_PER_GROUP


class ShardWalks:
    """The walked headers of an images folder's shards, group by group (`take`), from the header index where it
    holds a shard unchanged, else walked: ahead in `pool` (`start`) or on demand."""

    def __init__(self, src: ImageSource, index: ShardIndex) -> None:
        self.src = src
        self.index = index
        self._ahead: dict[int, tuple[dict[Path, WalkedShard | None], list[Path], Future | None]] = {}
        self._thread: ThreadPoolExecutor | None = None

    def shards(self, group: int) -> list[Path]:
        """The group's shards, each once, in the order its buckets look at them."""
        first = group * BUCKETS_PER_GROUP
        buckets = range(first, min(BUCKETS, first + BUCKETS_PER_GROUP))
        return list(dict.fromkeys(s for bucket in buckets for s in self.src.candidates(bucket)))

    def _split(self, group: int) -> tuple[dict[Path, WalkedShard | None], list[Path]]:
        known = {s: self.index.lookup(s) for s in self.shards(group)}
        return known, [s for s, w in known.items() if w is None]

    def start(self, pool: Executor) -> None:
        """Submit the walk of every group's shards that the index does not hold, in group order: to two threads
        of this process where the walk is compiled (module docstring), else to `pool` (the caption workers)."""
        if COMPILED:
            pool = self._thread = ThreadPoolExecutor(2, thread_name_prefix="kxl-shard-walk")
        for group in range(GROUPS):
            known, todo = self._split(group)
            job = pool.submit(walk_shards, [str(s) for s in todo]) if todo else None
            self._ahead[group] = (known, todo, job)

    def keep_only(self, groups: set[int]) -> None:
        """Cancel the walks of the other groups that have not started yet (no selected post needs them)."""
        for group, (_known, _todo, job) in list(self._ahead.items()):
            if group not in groups and job is not None and job.cancel():
                del self._ahead[group]

    def take(self, group: int, check: Callable[[], None] | None = None) -> dict[Path, WalkedShard | None]:
        """The group's shards and their headers (None for one that does not open or does not settle: the build's
        slower readers take it). Walked here when it was not started ahead; what was walked goes to the index."""
        ahead = self._ahead.pop(group, None)
        if ahead is None:
            known, todo = self._split(group)
            walked = walk_shards([str(s) for s in todo], check)
        else:
            known, todo, job = ahead
            walked = job.result() if job is not None else []
        for shard, w in zip(todo, walked, strict=True):
            known[shard] = w
            self.index.add(shard, w)
        return known

    def cancel(self) -> None:
        for _known, _todo, job in self._ahead.values():
            if job is not None:
                job.cancel()
        self._ahead.clear()
        if self._thread is not None:
            self._thread.shutdown(wait=True)  # a running walk ends with its group (~25 ms)
            self._thread = None


__all__ = ["BUCKETS_PER_GROUP", "GROUPS", "ShardWalks", "group_of"]

"""Training batches made ahead of the step in worker processes: the serial path's batches, only sooner.

Decoding a 4-Mpixel WebP, resizing and cropping it costs ~0.1 s of one core; on the training thread a GPU doing
8 images/s would wait about half the time. `TrainBatches` runs `data.make_batch` (the one definition of a batch:
crops and caption shuffles are seeded per entry, nothing depends on the process or the order) in a torch
DataLoader's worker processes and hands the training loop one micro-batch at a time:

* Order. The main process walks the run's (step, micro-batch) sequence from the start step (a resume starts mid
  epoch at the right micro-batch) to the last step, computing each epoch's rank order when it gets there
  (`BucketPlan.rank_micro_batches`, as the loop did), and sends each micro-batch as a self-contained job: the
  entry ids with just their entries and images (`PlanSlice`). Workers need no copy of the plan. The DataLoader
  returns results in job order, and every result carries its (step, micro-batch), checked on arrival.
* Workers are *spawned* (a fresh interpreter, on every platform): no fork of a rank holding CUDA, gloo threads
  and GiBs of model, and their command line is not the trainer's, so tools that count trainer ranks by command
  line do not count them. They are started once for the run (the single iterator makes them persistent), each
  keeps `prefetch_factor` micro-batches in flight, and on CUDA a pin-memory thread page-locks the batches.
* Signals. The supervisor's stop sends SIGTERM to every process below the launcher and a terminal's Ctrl+C sends
  SIGINT to the whole group; a worker must survive both, since the rank answers them by finishing the step and
  saving. So workers ignore SIGINT/SIGTERM from their first instruction (spawned while both are set to SIG_IGN in
  the rank, which blocks them meanwhile so none of its own is lost). The rank ends its workers in `close()` (the
  DataLoader's shutdown, then SIGKILL for any worker still there), also at interpreter exit; a rank that dies
  takes them with it (PR_SET_PDEATHSIG on Linux, and torch's parent watchdog).
* Errors. A `KxlError` in a worker (a corrupt image: "cannot read image", naming the file) comes back as data
  and is raised in the rank as the same KxlError, with the same text, as the serial path raises it.
* `num_workers = 0` runs the same jobs on the training thread (the serial path, no processes).
* `wait_s` adds up the time the training thread waited for batches: the step event's `data_wait_s`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import KxlError
from .config import DatasetConfig
from .data import Batch, BucketPlan, PlanSlice, caption_options, make_batch

DEFAULT_MAX_WORKERS = 4
_SHIELDED = (signal.SIGINT, signal.SIGTERM)


def resolve_num_workers(setting: int, local_processes: int = 1) -> int:
    """`dataset.num_workers`: -1 = min(4, CPU cores per local rank - 1), so the ranks and their workers share the
    machine's cores; any other value as given."""
    if setting >= 0:
        return setting
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    per_rank = max(1, cores // max(1, local_processes))
    return max(0, min(DEFAULT_MAX_WORKERS, per_rank - 1))


@dataclass(frozen=True)
class _Job:
    step: int
    micro: int
    epoch: int
    entry_ids: tuple[int, ...]
    part: PlanSlice


@dataclass(frozen=True)
class _Failure:
    """A KxlError raised in a worker, as plain data (its class, full text, path and hint)."""

    cls: type
    text: str
    path: Any
    hint: str | None

    @classmethod
    def of(cls, exc: KxlError) -> _Failure:
        return cls(type(exc), str(exc), exc.path, exc.hint)

    def error(self) -> KxlError:
        err = self.cls.__new__(self.cls)
        Exception.__init__(err, self.text)
        err.path, err.hint = self.path, self.hint
        return err


class _BatchMaker:
    """The DataLoader's dataset: job -> (step, micro, Batch or _Failure). Map-style; the keys are the jobs."""

    def __init__(self, cfg: DatasetConfig, seed: int, load: bool):
        self.cfg = cfg
        self.seed = seed
        self.load = load
        self.options = caption_options(cfg)

    def __getitem__(self, job: _Job) -> tuple[int, int, Batch | _Failure]:
        try:
            batch = make_batch(job.part, list(job.entry_ids), self.cfg, self.seed, job.epoch, self.options,
                               load=self.load)  # fmt: skip
        except KxlError as exc:
            return job.step, job.micro, _Failure.of(exc)
        return job.step, job.micro, batch


def _identity(x: Any) -> Any:
    return x


@contextlib.contextmanager
def _signals_ignored_by_children() -> Iterator[None]:
    """Start child processes with SIGINT/SIGTERM ignored from their first instruction (an ignored signal stays
    ignored across exec, and Python keeps it so): set SIG_IGN around the spawn. Meanwhile the signals are blocked
    here, so one sent to the rank in that moment stays pending (Linux never discards a blocked signal) and reaches
    the rank's own handler once it is back."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be changed on the main thread
        return
    masked = hasattr(signal, "pthread_sigmask")
    if masked:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SHIELDED)
    old = {sig: signal.getsignal(sig) for sig in _SHIELDED}
    try:
        for sig in _SHIELDED:
            signal.signal(sig, signal.SIG_IGN)
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if masked:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _worker_init(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    """In each worker, before its first job: SIGINT/SIGTERM stay ignored (they are since the spawn), and the worker
    dies with the rank."""
    for sig in _SHIELDED:
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _close_at_exit(ref: weakref.ref) -> None:
    batches = ref()
    if batches is not None:
        batches.close()


def micro_batch_jobs(plan: BucketPlan, *, order_seed: int, world: int, rank: int, accum: int,
                     steps_per_epoch: int, start_step: int, total_steps: int) -> Iterator[_Job]:  # fmt: skip
    """This rank's micro-batches from `start_step` to the end, in training order (what the loop used to slice)."""
    epoch_of, order = None, None
    for step in range(start_step, total_steps):
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != epoch_of:
            order = plan.rank_micro_batches(epoch, order_seed, world, rank, accum)
            epoch_of = epoch
        for m in range(accum):
            ids = order[in_epoch * accum + m]
            yield _Job(step, m, epoch, tuple(ids), plan.slice(ids))


class TrainBatches:
    """The run's micro-batches, made by `num_workers` processes (0: on this thread) in exactly the serial order."""

    def __init__(self, plan: BucketPlan, cfg: DatasetConfig, *, seed: int, order_seed: int, world: int, rank: int,
                 accum: int, steps_per_epoch: int, start_step: int, total_steps: int, load: bool = True,
                 num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int = 2):  # fmt: skip
        self.accum = accum
        self.num_workers = num_workers
        self.wait_s = 0.0
        self._maker = _BatchMaker(cfg, seed, load)
        self._jobs = micro_batch_jobs(plan, order_seed=order_seed, world=world, rank=rank, accum=accum,
                                      steps_per_epoch=steps_per_epoch, start_step=start_step,
                                      total_steps=total_steps)  # fmt: skip
        self._loader_iter: Any = None
        self._closed = False
        if num_workers <= 0:
            self._it: Iterator = (self._maker[job] for job in self._jobs)
            return
        import torch.utils.data

        loader = torch.utils.data.DataLoader(
            self._maker,  # type: ignore[arg-type] - map-style: __getitem__(job)
            batch_size=None,
            sampler=self._jobs,  # type: ignore[arg-type] - any iterable of keys
            num_workers=num_workers,
            collate_fn=_identity,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor,
            persistent_workers=True,
            worker_init_fn=_worker_init,
            multiprocessing_context="spawn",
        )
        with _signals_ignored_by_children():
            self._loader_iter = iter(loader)  # starts the workers
        self._it = self._loader_iter
        # Before multiprocessing's own exit hook, which would SIGTERM (ignored) and then wait for the workers forever.
        atexit.register(_close_at_exit, weakref.ref(self))

    def worker_pids(self) -> list[int]:
        return [w.pid for w in getattr(self._loader_iter, "_workers", []) if w.pid is not None]

    def next(self) -> tuple[int, int, Batch]:
        """(step, micro, batch) of the next micro-batch; a worker's KxlError is raised here."""
        t0 = time.perf_counter()
        step, micro, batch = next(self._it)
        self.wait_s += time.perf_counter() - t0
        if isinstance(batch, _Failure):
            raise batch.error()
        return step, micro, batch

    def micro_batches(self, step: int) -> Iterator[Batch]:
        """The `accum` micro-batches of optimizer step `step` (0-based), in order."""
        for m in range(self.accum):
            got_step, got_micro, batch = self.next()
            if (got_step, got_micro) != (step, m):
                raise RuntimeError(f"data loader out of step: got micro-batch {got_micro} of step {got_step} "
                                   f"where micro-batch {m} of step {step} was due")  # fmt: skip
            yield batch

    def close(self) -> None:
        """Stop the workers (idempotent); none is left running, whatever state it was in."""
        if self._closed:
            return
        self._closed = True
        it, self._loader_iter = self._loader_iter, None
        self._it = iter(())
        if it is None:
            return
        workers = list(getattr(it, "_workers", []))
        try:
            it._shutdown_workers()
        except Exception:  # noqa: BLE001 - shutting down must not mask what ended the run
            pass
        for w in workers:
            try:
                if w.is_alive():
                    w.kill()  # they ignore SIGTERM: a stuck one (a hung read) needs SIGKILL
                w.join(timeout=5)
            except (OSError, ValueError, AssertionError):
                pass

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

"""Driving the cells of one export through a Dask cluster: bounded submission, retries with
backoff, progress, cancellation. Cells already marked done are skipped, which is what makes an
interrupted export resumable.

Dask already reschedules a task whose worker dies; the retries here cover errors a cell raises
itself (a storage hiccup, a bad read), with a growing pause between attempts.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from distributed import Client, wait

from export.cell_task import CellJob, read_done, run_cell


@dataclass
class SweepState:
    total: int
    done: dict[str, dict] = field(default_factory=dict)  # cell id -> summary
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> last error
    retried: int = 0
    cancelled: bool = False

    @property
    def objects(self) -> int:
        return sum(s.get("objects", 0) for s in self.done.values())


@dataclass(frozen=True)
class SweepOptions:
    retries: int = 3  # attempts after the first, for errors a cell raises
    backoff_s: float = 1.0  # pause before retry k is backoff_s * 2**(k-1)
    max_in_flight: int | None = None  # default: 4 per worker thread
    resources: dict[str, float] | None = None  # e.g. {"GPU": 1}: only workers declaring it


def sweep(
    client: Client,
    name: str,
    jobs: Sequence[CellJob],
    options: SweepOptions = SweepOptions(),
    on_progress: Callable[[SweepState], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> SweepState:
    state = SweepState(total=len(jobs))
    ready: list[tuple[int, CellJob]] = []
    for job in jobs:
        earlier = read_done(job.export_dir, job.cell.id)
        if earlier is not None:
            state.done[job.cell.id] = earlier
        else:
            ready.append((0, job))
    if on_progress:
        on_progress(state)
    limit = options.max_in_flight or max(4, 4 * sum(client.nthreads().values()))
    waiting: list[tuple[float, int, int, CellJob]] = []  # (due, tiebreak, attempt, job)
    tiebreak = itertools.count()
    in_flight: dict = {}
    ready.reverse()  # pop() from the end keeps row-major order
    while ready or waiting or in_flight:
        if cancelled():
            client.cancel(list(in_flight))
            state.cancelled = True
            break
        now = time.monotonic()
        while waiting and waiting[0][0] <= now:
            _due, _tie, attempt, job = heapq.heappop(waiting)
            ready.append((attempt, job))
        while ready and len(in_flight) < limit:
            attempt, job = ready.pop()
            future = client.submit(
                run_cell,
                job,
                key=f"cell-{name}-{job.cell.id}-{attempt}",
                pure=False,
                resources=options.resources,
            )
            in_flight[future] = (attempt, job)
        if not in_flight:
            time.sleep(min(0.2, max(0.0, waiting[0][0] - now)) if waiting else 0)
            continue
        try:
            finished = wait(list(in_flight), timeout=0.5, return_when="FIRST_COMPLETED").done
        except TimeoutError:  # nothing finished yet: look at cancellation and retries again
            finished = set()
        for future in finished:
            attempt, job = in_flight.pop(future)
            if future.status == "finished":
                state.done[job.cell.id] = future.result()
                state.failed.pop(job.cell.id, None)
            else:
                error = _error_text(future)
                if attempt < options.retries:
                    state.retried += 1
                    due = time.monotonic() + options.backoff_s * 2**attempt
                    heapq.heappush(waiting, (due, next(tiebreak), attempt + 1, job))
                else:
                    state.failed[job.cell.id] = error
            future.release()
        if finished and on_progress:
            on_progress(state)
    if on_progress:
        on_progress(state)
    return state


def _error_text(future) -> str:
    try:
        exc = future.exception(timeout=5)
    except Exception as lookup:  # cancelled or lost: say so rather than fail the sweep
        return f"{type(lookup).__name__}: {lookup}"
    return f"{type(exc).__name__}: {exc}" if exc is not None else "cancelled"

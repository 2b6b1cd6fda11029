"""A link shared equally by the transfers on it (processor sharing), for the worker emulator's model.

Pure: the model moves it forward (``advance``), asks when the next transfer ends (``next_end_in``) and
takes the transfers whose bytes have all moved (``take_finished``). Admission control is ``refusal``: a
transfer that would end after its ``reply_by``, or push one already on the link past its own, is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

# Bytes this close to a transfer's size, relative to it, have all moved.
_EPS: Final = 1e-9


class Job(Protocol):
    op: str
    key: str
    size: float
    remaining: float
    reply_by: float


J = TypeVar("J", bound=Job)


def ps_finish_offsets(remaining: Sequence[float], capacity: float) -> list[float]:
    """Seconds until each job ends when ``capacity`` is shared equally by all unfinished jobs (processor
    sharing) and no job arrives: the smallest ends first, then the others speed up."""
    order = sorted(range(len(remaining)), key=lambda i: remaining[i])
    out = [0.0] * len(remaining)
    elapsed = 0.0
    done = 0.0
    for k, i in enumerate(order):
        elapsed += (remaining[i] - done) * (len(order) - k) / capacity
        done = remaining[i]
        out[i] = elapsed
    return out


@dataclass(slots=True, eq=False)
class SharedLink(Generic[J]):
    name: str
    capacity: float
    """Bytes per second, shared equally by the jobs on the link."""
    jobs: list[J] = field(default_factory=list)

    def refusal(self, now: float, size: float, reply_by: float, what: str) -> str | None:
        """Why sending ``size`` more bytes from ``now`` would break a ``reply_by``, or None if it fits."""
        offsets = ps_finish_offsets([j.remaining for j in self.jobs] + [size], self.capacity)
        end = now + offsets[-1]
        if end > reply_by + 1e-9:
            return (
                f"reply_by: sending {what} ({size:.0f} bytes over the {self.name} link at "
                f"{self.capacity:.0f} B/s, shared by {len(offsets)}) would end at {end:.3f}, "
                f"after reply_by {reply_by:.3f}"
            )
        for job, offset in zip(self.jobs, offsets, strict=False):
            if now + offset > job.reply_by + 1e-9:
                return (
                    f"reply_by: the {self.name} link is busy: sending {what} would delay "
                    f"{job.op} {job.key!r} past its reply_by {job.reply_by:.3f}"
                )
        return None

    def next_end_in(self) -> float:
        """Seconds until the first job on the link ends (inf when it is idle)."""
        if not self.jobs:
            return math.inf
        return min(j.remaining for j in self.jobs) * len(self.jobs) / self.capacity

    def advance(self, dt: float) -> None:
        if self.jobs:
            moved = self.capacity / len(self.jobs) * dt
            for job in self.jobs:
                job.remaining = max(0.0, job.remaining - moved)

    def take_finished(self) -> list[J]:
        """The jobs whose bytes have all moved, taken off the link."""
        finished = [j for j in self.jobs if j.remaining <= _EPS * max(1.0, j.size)]
        for job in finished:
            self.jobs.remove(job)
        return finished

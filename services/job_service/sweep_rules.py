"""What the sweeper deletes and why, decided without I/O: how a key under jobs/ names its job,
and the verdict on an object given what the database knows of that job. Keys are recognised
through services.common.keys only; a new kind of key must be taught here before anything writes
it, or it counts as an orphan."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from services.common import keys
from services.job_service.metrics import SweepReason


@dataclass(frozen=True)
class JobFacts:
    """What the database says of a job that objects are stored for."""

    active: bool
    attempt: int
    input_due: bool  # finished more than INPUT_RETENTION_SECONDS ago
    outputs: frozenset[str] = frozenset()  # its recorded output keys in this bucket


def job_of(key: str) -> uuid.UUID | None:
    """The job whose prefix `key` is under, or None when its first segment names no job ID in
    the spelling job_prefix gives one."""
    if not key.startswith(keys.JOBS_PREFIX):
        return None
    segment = key[len(keys.JOBS_PREFIX) :].partition("/")[0]
    try:
        job_id = uuid.UUID(segment)
    except ValueError:
        return None
    return job_id if key.startswith(keys.job_prefix(str(job_id))) else None


def verdict(key: str, job: JobFacts | None) -> SweepReason | None:
    """Why `key`, an object under jobs/ older than the grace, goes (None: it stays). `job` is
    what the database knows of the job whose prefix the key is under (None: no such job)."""
    if job is None:
        return "orphan"  # no record can point to it
    job_id = job_of(key)
    if job_id is not None and key == keys.input_key(str(job_id)):
        return "input" if job.input_due and not job.active else None
    output = keys.parse_output_key(key)
    if output is None:
        return "orphan"  # under a job's prefix, but no key of the layout
    if key in job.outputs:
        return None
    if job.active and output.attempt >= job.attempt:
        return None  # the running attempt's uploads, which CompleteJob has yet to record
    return "orphan"


@dataclass
class Swept:
    """What one round deleted, by reason."""

    counts: dict[SweepReason, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

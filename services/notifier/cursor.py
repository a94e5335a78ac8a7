"""Resume positions in the event stream, handed to clients as opaque strings.

A cursor names a point in MEDIA_EVENTS: the stream's creation time (a recreated stream has new
sequence numbers, so an old cursor must get a reset, never a silent gap) and the sequence of the
last event the stream had dealt with. A WatchJob cursor also carries the job (a short hash, so a
cursor is not resumed on another job) and the last version sent, so that a resume skips what the
watcher already has. A WatchJobs cursor taken inside the opening snapshot says so: resuming it
sends the snapshot again.

Layout (then urlsafe base64 without padding): version, kind, created (µs), sequence, job version,
job hash.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import struct
from dataclasses import dataclass

_VERSION = 1
_LAYOUT = struct.Struct(">BBQQQ4s")
_NO_JOB = b"\0\0\0\0"


class Kind(enum.IntEnum):
    EVENT = 1  # after the event at `sequence`
    SNAPSHOT = 2  # inside a WatchJobs opening snapshot taken at `sequence`


class CursorError(ValueError):
    """Not a cursor this service made."""


@dataclass(frozen=True, slots=True)
class Cursor:
    created: int  # MEDIA_EVENTS' creation time in microseconds
    sequence: int
    kind: Kind = Kind.EVENT
    version: int = 0  # WatchJob: the job's version the watcher has
    job: bytes = _NO_JOB

    def encode(self) -> str:
        raw = _LAYOUT.pack(_VERSION, self.kind, self.created, self.sequence, self.version, self.job)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def is_for_job(self, job_id: str) -> bool:
        return self.job in (_NO_JOB, job_hash(job_id))


def job_hash(job_id: str) -> bytes:
    return hashlib.sha256(job_id.encode()).digest()[:4]


def decode(text: str) -> Cursor:
    if len(text) > 64:
        raise CursorError("too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CursorError("not base64") from None
    if len(raw) != _LAYOUT.size:
        raise CursorError("wrong length")
    version, kind, created, sequence, job_version, job = _LAYOUT.unpack(raw)
    if version != _VERSION or kind not in Kind._value2member_map_:
        raise CursorError("unknown version")
    if job_version > 2**62:
        raise CursorError("bad version")
    return Cursor(created, sequence, Kind(kind), job_version, job)

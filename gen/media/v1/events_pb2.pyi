from media.v1 import job_pb2 as _job_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobDispatch(_message.Message):
    __slots__ = ("job_id", "kind", "image", "video")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: _job_pb2.MediaKind
    image: _job_pb2.ImageParams
    video: _job_pb2.VideoParams
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[_job_pb2.MediaKind, str]] = ..., image: _Optional[_Union[_job_pb2.ImageParams, _Mapping]] = ..., video: _Optional[_Union[_job_pb2.VideoParams, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

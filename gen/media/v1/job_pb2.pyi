import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MediaKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEDIA_KIND_UNSPECIFIED: _ClassVar[MediaKind]
    MEDIA_KIND_IMAGE: _ClassVar[MediaKind]
    MEDIA_KIND_VIDEO: _ClassVar[MediaKind]

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_QUEUED: _ClassVar[JobStatus]
    JOB_STATUS_RUNNING: _ClassVar[JobStatus]
    JOB_STATUS_SUCCEEDED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELED: _ClassVar[JobStatus]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]

class ImageStyle(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_STYLE_UNSPECIFIED: _ClassVar[ImageStyle]
    IMAGE_STYLE_PHOTOREALISTIC: _ClassVar[ImageStyle]
    IMAGE_STYLE_DIGITAL_ART: _ClassVar[ImageStyle]
    IMAGE_STYLE_ILLUSTRATION: _ClassVar[ImageStyle]
    IMAGE_STYLE_ANIME: _ClassVar[ImageStyle]
    IMAGE_STYLE_WATERCOLOR: _ClassVar[ImageStyle]
    IMAGE_STYLE_SKETCH: _ClassVar[ImageStyle]
    IMAGE_STYLE_CINEMATIC: _ClassVar[ImageStyle]
    IMAGE_STYLE_3D_RENDER: _ClassVar[ImageStyle]

class ImageQuality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_QUALITY_UNSPECIFIED: _ClassVar[ImageQuality]
    IMAGE_QUALITY_STANDARD: _ClassVar[ImageQuality]
    IMAGE_QUALITY_HIGH: _ClassVar[ImageQuality]

class AspectRatio(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASPECT_RATIO_UNSPECIFIED: _ClassVar[AspectRatio]
    ASPECT_RATIO_16_9: _ClassVar[AspectRatio]
    ASPECT_RATIO_9_16: _ClassVar[AspectRatio]

class PersonGeneration(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERSON_GENERATION_UNSPECIFIED: _ClassVar[PersonGeneration]
    PERSON_GENERATION_DONT_ALLOW: _ClassVar[PersonGeneration]
    PERSON_GENERATION_ALLOW_ADULT: _ClassVar[PersonGeneration]
    PERSON_GENERATION_ALLOW_ALL: _ClassVar[PersonGeneration]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_GENERATION_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_SAFETY_BLOCKED: _ClassVar[ErrorCode]
    ERROR_CODE_NO_MEDIA: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_REQUEST: _ClassVar[ErrorCode]
    ERROR_CODE_RATE_LIMITED: _ClassVar[ErrorCode]
    ERROR_CODE_UPSTREAM_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_UPLOAD_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_ATTEMPTS_EXHAUSTED: _ClassVar[ErrorCode]
    ERROR_CODE_CONFIGURATION: _ClassVar[ErrorCode]
MEDIA_KIND_UNSPECIFIED: MediaKind
MEDIA_KIND_IMAGE: MediaKind
MEDIA_KIND_VIDEO: MediaKind
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_QUEUED: JobStatus
JOB_STATUS_RUNNING: JobStatus
JOB_STATUS_SUCCEEDED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELED: JobStatus
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat
IMAGE_STYLE_UNSPECIFIED: ImageStyle
IMAGE_STYLE_PHOTOREALISTIC: ImageStyle
IMAGE_STYLE_DIGITAL_ART: ImageStyle
IMAGE_STYLE_ILLUSTRATION: ImageStyle
IMAGE_STYLE_ANIME: ImageStyle
IMAGE_STYLE_WATERCOLOR: ImageStyle
IMAGE_STYLE_SKETCH: ImageStyle
IMAGE_STYLE_CINEMATIC: ImageStyle
IMAGE_STYLE_3D_RENDER: ImageStyle
IMAGE_QUALITY_UNSPECIFIED: ImageQuality
IMAGE_QUALITY_STANDARD: ImageQuality
IMAGE_QUALITY_HIGH: ImageQuality
ASPECT_RATIO_UNSPECIFIED: AspectRatio
ASPECT_RATIO_16_9: AspectRatio
ASPECT_RATIO_9_16: AspectRatio
PERSON_GENERATION_UNSPECIFIED: PersonGeneration
PERSON_GENERATION_DONT_ALLOW: PersonGeneration
PERSON_GENERATION_ALLOW_ADULT: PersonGeneration
PERSON_GENERATION_ALLOW_ALL: PersonGeneration
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_GENERATION_FAILED: ErrorCode
ERROR_CODE_SAFETY_BLOCKED: ErrorCode
ERROR_CODE_NO_MEDIA: ErrorCode
ERROR_CODE_INVALID_REQUEST: ErrorCode
ERROR_CODE_RATE_LIMITED: ErrorCode
ERROR_CODE_UPSTREAM_UNAVAILABLE: ErrorCode
ERROR_CODE_DEADLINE_EXCEEDED: ErrorCode
ERROR_CODE_UPLOAD_FAILED: ErrorCode
ERROR_CODE_ATTEMPTS_EXHAUSTED: ErrorCode
ERROR_CODE_CONFIGURATION: ErrorCode

class InputImage(_message.Message):
    __slots__ = ("data", "mime_type", "bucket", "key")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    mime_type: str
    bucket: str
    key: str
    def __init__(self, data: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class ImageParams(_message.Message):
    __slots__ = ("prompt", "input_image", "number_of_images", "size", "format", "style", "quality", "model")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    INPUT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    input_image: InputImage
    number_of_images: int
    size: str
    format: ImageFormat
    style: ImageStyle
    quality: ImageQuality
    model: str
    def __init__(self, prompt: _Optional[str] = ..., input_image: _Optional[_Union[InputImage, _Mapping]] = ..., number_of_images: _Optional[int] = ..., size: _Optional[str] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., style: _Optional[_Union[ImageStyle, str]] = ..., quality: _Optional[_Union[ImageQuality, str]] = ..., model: _Optional[str] = ...) -> None: ...

class VideoParams(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "input_image", "aspect_ratio", "duration_seconds", "number_of_videos", "person_generation", "model")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    INPUT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_VIDEOS_FIELD_NUMBER: _ClassVar[int]
    PERSON_GENERATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    input_image: InputImage
    aspect_ratio: AspectRatio
    duration_seconds: int
    number_of_videos: int
    person_generation: PersonGeneration
    model: str
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., input_image: _Optional[_Union[InputImage, _Mapping]] = ..., aspect_ratio: _Optional[_Union[AspectRatio, str]] = ..., duration_seconds: _Optional[int] = ..., number_of_videos: _Optional[int] = ..., person_generation: _Optional[_Union[PersonGeneration, str]] = ..., model: _Optional[str] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("index", "bucket", "key", "content_type", "byte_size", "width", "height", "duration_seconds", "sha256", "url", "url_expire_time")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    index: int
    bucket: str
    key: str
    content_type: str
    byte_size: int
    width: int
    height: int
    duration_seconds: float
    sha256: str
    url: str
    url_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, index: _Optional[int] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., content_type: _Optional[str] = ..., byte_size: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., sha256: _Optional[str] = ..., url: _Optional[str] = ..., url_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "kind", "status", "progress", "status_message", "attempt", "image", "video", "outputs", "error", "request_id", "model", "generation_time", "create_time", "update_time", "start_time", "end_time", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: MediaKind
    status: JobStatus
    progress: int
    status_message: str
    attempt: int
    image: ImageParams
    video: VideoParams
    outputs: _containers.RepeatedCompositeFieldContainer[Output]
    error: JobError
    request_id: str
    model: str
    generation_time: _duration_pb2.Duration
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[MediaKind, str]] = ..., status: _Optional[_Union[JobStatus, str]] = ..., progress: _Optional[int] = ..., status_message: _Optional[str] = ..., attempt: _Optional[int] = ..., image: _Optional[_Union[ImageParams, _Mapping]] = ..., video: _Optional[_Union[VideoParams, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[Output, _Mapping]]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., generation_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

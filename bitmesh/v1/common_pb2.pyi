import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_KIND_UNSPECIFIED: _ClassVar[DatasetKind]
    DATASET_KIND_DIGITS: _ClassVar[DatasetKind]
    DATASET_KIND_SYNTHETIC: _ClassVar[DatasetKind]
    DATASET_KIND_IMAGE_FOLDER: _ClassVar[DatasetKind]

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_TRAIN: _ClassVar[Split]
    SPLIT_TEST: _ClassVar[Split]

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    GRANULARITY_PER_TENSOR: _ClassVar[Granularity]
    GRANULARITY_PER_CHANNEL: _ClassVar[Granularity]
    GRANULARITY_PER_BLOCK: _ClassVar[Granularity]

class SizeAccounting(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIZE_ACCOUNTING_UNSPECIFIED: _ClassVar[SizeAccounting]
    SIZE_ACCOUNTING_WEIGHTS_AND_SCALES: _ClassVar[SizeAccounting]
    SIZE_ACCOUNTING_WEIGHTS_ONLY: _ClassVar[SizeAccounting]

class CostAxis(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COST_AXIS_UNSPECIFIED: _ClassVar[CostAxis]
    COST_AXIS_SIZE: _ClassVar[CostAxis]
    COST_AXIS_BOPS: _ClassVar[CostAxis]
    COST_AXIS_LATENCY: _ClassVar[CostAxis]
    COST_AXIS_AVG_WEIGHT_BITS: _ClassVar[CostAxis]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
DATASET_KIND_UNSPECIFIED: DatasetKind
DATASET_KIND_DIGITS: DatasetKind
DATASET_KIND_SYNTHETIC: DatasetKind
DATASET_KIND_IMAGE_FOLDER: DatasetKind
SPLIT_UNSPECIFIED: Split
SPLIT_TRAIN: Split
SPLIT_TEST: Split
GRANULARITY_UNSPECIFIED: Granularity
GRANULARITY_PER_TENSOR: Granularity
GRANULARITY_PER_CHANNEL: Granularity
GRANULARITY_PER_BLOCK: Granularity
SIZE_ACCOUNTING_UNSPECIFIED: SizeAccounting
SIZE_ACCOUNTING_WEIGHTS_AND_SCALES: SizeAccounting
SIZE_ACCOUNTING_WEIGHTS_ONLY: SizeAccounting
COST_AXIS_UNSPECIFIED: CostAxis
COST_AXIS_SIZE: CostAxis
COST_AXIS_BOPS: CostAxis
COST_AXIS_LATENCY: CostAxis
COST_AXIS_AVG_WEIGHT_BITS: CostAxis
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class ModelRef(_message.Message):
    __slots__ = ("architecture", "exported_program", "torchscript", "weights", "input_shape", "num_classes")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_PROGRAM_FIELD_NUMBER: _ClassVar[int]
    TORCHSCRIPT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    exported_program: str
    torchscript: str
    weights: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    def __init__(self, architecture: _Optional[str] = ..., exported_program: _Optional[str] = ..., torchscript: _Optional[str] = ..., weights: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("kind", "path", "shape", "num_classes", "split", "subset_size", "batch_size", "seed", "mean", "std", "eval_subset_size")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SUBSET_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    EVAL_SUBSET_SIZE_FIELD_NUMBER: _ClassVar[int]
    kind: DatasetKind
    path: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    split: Split
    subset_size: int
    batch_size: int
    seed: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    eval_subset_size: int
    def __init__(self, kind: _Optional[_Union[DatasetKind, str]] = ..., path: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., split: _Optional[_Union[Split, str]] = ..., subset_size: _Optional[int] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., eval_subset_size: _Optional[int] = ...) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "kind", "parameters", "macs", "weight_shape", "output_channels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    parameters: int
    macs: int
    weight_shape: _containers.RepeatedScalarFieldContainer[int]
    output_channels: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., parameters: _Optional[int] = ..., macs: _Optional[int] = ..., weight_shape: _Optional[_Iterable[int]] = ..., output_channels: _Optional[int] = ...) -> None: ...

class IntFormat(_message.Message):
    __slots__ = ("bits", "is_signed")
    BITS_FIELD_NUMBER: _ClassVar[int]
    IS_SIGNED_FIELD_NUMBER: _ClassVar[int]
    bits: int
    is_signed: bool
    def __init__(self, bits: _Optional[int] = ..., is_signed: _Optional[bool] = ...) -> None: ...

class FloatFormat(_message.Message):
    __slots__ = ("exponent_bits", "mantissa_bits")
    EXPONENT_BITS_FIELD_NUMBER: _ClassVar[int]
    MANTISSA_BITS_FIELD_NUMBER: _ClassVar[int]
    exponent_bits: int
    mantissa_bits: int
    def __init__(self, exponent_bits: _Optional[int] = ..., mantissa_bits: _Optional[int] = ...) -> None: ...

class NumericFormat(_message.Message):
    __slots__ = ("integer", "floating", "name")
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    FLOATING_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    integer: IntFormat
    floating: FloatFormat
    name: str
    def __init__(self, integer: _Optional[_Union[IntFormat, _Mapping]] = ..., floating: _Optional[_Union[FloatFormat, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class QuantOption(_message.Message):
    __slots__ = ("weight", "activation", "granularity")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    weight: NumericFormat
    activation: NumericFormat
    granularity: Granularity
    def __init__(self, weight: _Optional[_Union[NumericFormat, _Mapping]] = ..., activation: _Optional[_Union[NumericFormat, _Mapping]] = ..., granularity: _Optional[_Union[Granularity, str]] = ...) -> None: ...

class LayerConfig(_message.Message):
    __slots__ = ("layer", "option")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    OPTION_FIELD_NUMBER: _ClassVar[int]
    layer: str
    option: QuantOption
    def __init__(self, layer: _Optional[str] = ..., option: _Optional[_Union[QuantOption, _Mapping]] = ...) -> None: ...

class QuantConfig(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerConfig]
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerConfig, _Mapping]]] = ...) -> None: ...

class LayerCosts(_message.Message):
    __slots__ = ("size_bytes", "bops", "latency_ms", "scale_bytes")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BOPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SCALE_BYTES_FIELD_NUMBER: _ClassVar[int]
    size_bytes: float
    bops: float
    latency_ms: float
    scale_bytes: float
    def __init__(self, size_bytes: _Optional[float] = ..., bops: _Optional[float] = ..., latency_ms: _Optional[float] = ..., scale_bytes: _Optional[float] = ...) -> None: ...

class Budgets(_message.Message):
    __slots__ = ("max_size_bytes", "max_bops", "max_latency_ms", "max_avg_weight_bits", "latency_profile")
    MAX_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BOPS_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_AVG_WEIGHT_BITS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_PROFILE_FIELD_NUMBER: _ClassVar[int]
    max_size_bytes: float
    max_bops: float
    max_latency_ms: float
    max_avg_weight_bits: float
    latency_profile: str
    def __init__(self, max_size_bytes: _Optional[float] = ..., max_bops: _Optional[float] = ..., max_latency_ms: _Optional[float] = ..., max_avg_weight_bits: _Optional[float] = ..., latency_profile: _Optional[str] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("uri", "sha256", "media_type", "size_bytes")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    media_type: str
    size_bytes: int
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., media_type: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "progress", "stage", "message", "error", "created", "updated", "kind")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    progress: float
    stage: str
    message: str
    error: str
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    kind: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[float] = ..., stage: _Optional[str] = ..., message: _Optional[str] = ..., error: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

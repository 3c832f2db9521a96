from bitmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListLayersRequest(_message.Message):
    __slots__ = ("model", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    options: _containers.RepeatedCompositeFieldContainer[_common_pb2.QuantOption]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., options: _Optional[_Iterable[_Union[_common_pb2.QuantOption, _Mapping]]] = ...) -> None: ...

class LayerWithCosts(_message.Message):
    __slots__ = ("layer", "options")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    layer: _common_pb2.LayerInfo
    options: _containers.RepeatedCompositeFieldContainer[OptionCosts]
    def __init__(self, layer: _Optional[_Union[_common_pb2.LayerInfo, _Mapping]] = ..., options: _Optional[_Iterable[_Union[OptionCosts, _Mapping]]] = ...) -> None: ...

class OptionCosts(_message.Message):
    __slots__ = ("option", "option_key", "costs")
    OPTION_FIELD_NUMBER: _ClassVar[int]
    OPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    COSTS_FIELD_NUMBER: _ClassVar[int]
    option: _common_pb2.QuantOption
    option_key: str
    costs: _common_pb2.LayerCosts
    def __init__(self, option: _Optional[_Union[_common_pb2.QuantOption, _Mapping]] = ..., option_key: _Optional[str] = ..., costs: _Optional[_Union[_common_pb2.LayerCosts, _Mapping]] = ...) -> None: ...

class ListLayersResponse(_message.Message):
    __slots__ = ("layers", "total_parameters", "total_macs", "model_hash", "weight_parameters", "weight_coverage")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MACS_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerWithCosts]
    total_parameters: int
    total_macs: int
    model_hash: str
    weight_parameters: int
    weight_coverage: float
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerWithCosts, _Mapping]]] = ..., total_parameters: _Optional[int] = ..., total_macs: _Optional[int] = ..., model_hash: _Optional[str] = ..., weight_parameters: _Optional[int] = ..., weight_coverage: _Optional[float] = ...) -> None: ...

class EstimatorSettings(_message.Message):
    __slots__ = ("target_relative_se", "max_samples", "seed", "num_batches")
    TARGET_RELATIVE_SE_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    target_relative_se: float
    max_samples: int
    seed: int
    num_batches: int
    def __init__(self, target_relative_se: _Optional[float] = ..., max_samples: _Optional[int] = ..., seed: _Optional[int] = ..., num_batches: _Optional[int] = ...) -> None: ...

class StartAnalysisRequest(_message.Message):
    __slots__ = ("model", "dataset", "options", "settings", "activation_sensitivity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    dataset: _common_pb2.DatasetRef
    options: _containers.RepeatedCompositeFieldContainer[_common_pb2.QuantOption]
    settings: EstimatorSettings
    activation_sensitivity: bool
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., options: _Optional[_Iterable[_Union[_common_pb2.QuantOption, _Mapping]]] = ..., settings: _Optional[_Union[EstimatorSettings, _Mapping]] = ..., activation_sensitivity: _Optional[bool] = ...) -> None: ...

class OptionPerturbation(_message.Message):
    __slots__ = ("option", "option_key", "weight_error_sq", "omega", "costs")
    OPTION_FIELD_NUMBER: _ClassVar[int]
    OPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_ERROR_SQ_FIELD_NUMBER: _ClassVar[int]
    OMEGA_FIELD_NUMBER: _ClassVar[int]
    COSTS_FIELD_NUMBER: _ClassVar[int]
    option: _common_pb2.QuantOption
    option_key: str
    weight_error_sq: float
    omega: float
    costs: _common_pb2.LayerCosts
    def __init__(self, option: _Optional[_Union[_common_pb2.QuantOption, _Mapping]] = ..., option_key: _Optional[str] = ..., weight_error_sq: _Optional[float] = ..., omega: _Optional[float] = ..., costs: _Optional[_Union[_common_pb2.LayerCosts, _Mapping]] = ...) -> None: ...

class LayerSensitivity(_message.Message):
    __slots__ = ("layer", "trace", "normalized_trace", "standard_error", "samples", "perturbations", "activation_trace")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_TRACE_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERROR_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PERTURBATIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_TRACE_FIELD_NUMBER: _ClassVar[int]
    layer: _common_pb2.LayerInfo
    trace: float
    normalized_trace: float
    standard_error: float
    samples: int
    perturbations: _containers.RepeatedCompositeFieldContainer[OptionPerturbation]
    activation_trace: float
    def __init__(self, layer: _Optional[_Union[_common_pb2.LayerInfo, _Mapping]] = ..., trace: _Optional[float] = ..., normalized_trace: _Optional[float] = ..., standard_error: _Optional[float] = ..., samples: _Optional[int] = ..., perturbations: _Optional[_Iterable[_Union[OptionPerturbation, _Mapping]]] = ..., activation_trace: _Optional[float] = ...) -> None: ...

class SensitivityReport(_message.Message):
    __slots__ = ("layers", "model_hash", "dataset_hash", "settings", "seconds", "cached", "artifact")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    DATASET_HASH_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerSensitivity]
    model_hash: str
    dataset_hash: str
    settings: EstimatorSettings
    seconds: float
    cached: bool
    artifact: _common_pb2.ArtifactRef
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerSensitivity, _Mapping]]] = ..., model_hash: _Optional[str] = ..., dataset_hash: _Optional[str] = ..., settings: _Optional[_Union[EstimatorSettings, _Mapping]] = ..., seconds: _Optional[float] = ..., cached: _Optional[bool] = ..., artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class LayerEstimate(_message.Message):
    __slots__ = ("layer", "trace", "standard_error", "samples", "done")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERROR_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    layer: str
    trace: float
    standard_error: float
    samples: int
    done: bool
    def __init__(self, layer: _Optional[str] = ..., trace: _Optional[float] = ..., standard_error: _Optional[float] = ..., samples: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class SensitivityEvent(_message.Message):
    __slots__ = ("status", "layers")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    layers: _containers.RepeatedCompositeFieldContainer[LayerEstimate]
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[LayerEstimate, _Mapping]]] = ...) -> None: ...

class AnalysisResult(_message.Message):
    __slots__ = ("status", "report")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    report: SensitivityReport
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., report: _Optional[_Union[SensitivityReport, _Mapping]] = ...) -> None: ...

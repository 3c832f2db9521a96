from bitmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_STATE_RUNNING: _ClassVar[TrialState]
    TRIAL_STATE_PROMOTED: _ClassVar[TrialState]
    TRIAL_STATE_PRUNED: _ClassVar[TrialState]
    TRIAL_STATE_COMPLETE: _ClassVar[TrialState]
    TRIAL_STATE_FAILED: _ClassVar[TrialState]
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_STATE_RUNNING: TrialState
TRIAL_STATE_PROMOTED: TrialState
TRIAL_STATE_PRUNED: TrialState
TRIAL_STATE_COMPLETE: TrialState
TRIAL_STATE_FAILED: TrialState

class Categorical(_message.Message):
    __slots__ = ("choices",)
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, choices: _Optional[_Iterable[str]] = ...) -> None: ...

class FloatRange(_message.Message):
    __slots__ = ("low", "high", "log")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    log: bool
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., log: _Optional[bool] = ...) -> None: ...

class IntRange(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: int
    high: int
    def __init__(self, low: _Optional[int] = ..., high: _Optional[int] = ...) -> None: ...

class Hyperparameter(_message.Message):
    __slots__ = ("name", "categorical", "float_range", "int_range")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    FLOAT_RANGE_FIELD_NUMBER: _ClassVar[int]
    INT_RANGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    categorical: Categorical
    float_range: FloatRange
    int_range: IntRange
    def __init__(self, name: _Optional[str] = ..., categorical: _Optional[_Union[Categorical, _Mapping]] = ..., float_range: _Optional[_Union[FloatRange, _Mapping]] = ..., int_range: _Optional[_Union[IntRange, _Mapping]] = ...) -> None: ...

class Rung(_message.Message):
    __slots__ = ("data_fraction", "steps")
    DATA_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    data_fraction: float
    steps: int
    def __init__(self, data_fraction: _Optional[float] = ..., steps: _Optional[int] = ...) -> None: ...

class StartSearchRequest(_message.Message):
    __slots__ = ("model", "dataset", "config", "budgets", "space", "trials", "fidelity", "full_fidelity_checks", "seed", "request_id", "full_fidelity", "reduction_factor", "sampler", "parallel_trials", "candidates", "batch_size", "default_option")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    FULL_FIDELITY_CHECKS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FULL_FIDELITY_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_TRIALS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OPTION_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    dataset: _common_pb2.DatasetRef
    config: _common_pb2.QuantConfig
    budgets: _common_pb2.Budgets
    space: _containers.RepeatedCompositeFieldContainer[Hyperparameter]
    trials: int
    fidelity: _containers.RepeatedCompositeFieldContainer[Rung]
    full_fidelity_checks: int
    seed: int
    request_id: str
    full_fidelity: Rung
    reduction_factor: int
    sampler: str
    parallel_trials: int
    candidates: _containers.RepeatedCompositeFieldContainer[_common_pb2.QuantOption]
    batch_size: int
    default_option: _common_pb2.QuantOption
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., config: _Optional[_Union[_common_pb2.QuantConfig, _Mapping]] = ..., budgets: _Optional[_Union[_common_pb2.Budgets, _Mapping]] = ..., space: _Optional[_Iterable[_Union[Hyperparameter, _Mapping]]] = ..., trials: _Optional[int] = ..., fidelity: _Optional[_Iterable[_Union[Rung, _Mapping]]] = ..., full_fidelity_checks: _Optional[int] = ..., seed: _Optional[int] = ..., request_id: _Optional[str] = ..., full_fidelity: _Optional[_Union[Rung, _Mapping]] = ..., reduction_factor: _Optional[int] = ..., sampler: _Optional[str] = ..., parallel_trials: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[_common_pb2.QuantOption, _Mapping]]] = ..., batch_size: _Optional[int] = ..., default_option: _Optional[_Union[_common_pb2.QuantOption, _Mapping]] = ...) -> None: ...

class TrialRecord(_message.Message):
    __slots__ = ("number", "params", "rung", "score", "state", "reason", "training_steps", "rung_scores", "full_score")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRAINING_STEPS_FIELD_NUMBER: _ClassVar[int]
    RUNG_SCORES_FIELD_NUMBER: _ClassVar[int]
    FULL_SCORE_FIELD_NUMBER: _ClassVar[int]
    number: int
    params: _containers.ScalarMap[str, str]
    rung: int
    score: float
    state: TrialState
    reason: str
    training_steps: int
    rung_scores: _containers.RepeatedScalarFieldContainer[float]
    full_score: float
    def __init__(self, number: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ..., rung: _Optional[int] = ..., score: _Optional[float] = ..., state: _Optional[_Union[TrialState, str]] = ..., reason: _Optional[str] = ..., training_steps: _Optional[int] = ..., rung_scores: _Optional[_Iterable[float]] = ..., full_score: _Optional[float] = ...) -> None: ...

class SearchEvent(_message.Message):
    __slots__ = ("status", "trial", "best")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    trial: TrialRecord
    best: TrialRecord
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., trial: _Optional[_Union[TrialRecord, _Mapping]] = ..., best: _Optional[_Union[TrialRecord, _Mapping]] = ...) -> None: ...

class ProxyQuality(_message.Message):
    __slots__ = ("kendall_tau", "full_fidelity_trials", "search_steps", "full_search_steps", "compute_ratio", "check_steps")
    KENDALL_TAU_FIELD_NUMBER: _ClassVar[int]
    FULL_FIDELITY_TRIALS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    FULL_SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_RATIO_FIELD_NUMBER: _ClassVar[int]
    CHECK_STEPS_FIELD_NUMBER: _ClassVar[int]
    kendall_tau: float
    full_fidelity_trials: int
    search_steps: int
    full_search_steps: int
    compute_ratio: float
    check_steps: int
    def __init__(self, kendall_tau: _Optional[float] = ..., full_fidelity_trials: _Optional[int] = ..., search_steps: _Optional[int] = ..., full_search_steps: _Optional[int] = ..., compute_ratio: _Optional[float] = ..., check_steps: _Optional[int] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("status", "best_params", "best_score", "trials", "quality", "best_trial", "config")
    class BestParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BEST_PARAMS_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    best_params: _containers.ScalarMap[str, str]
    best_score: float
    trials: _containers.RepeatedCompositeFieldContainer[TrialRecord]
    quality: ProxyQuality
    best_trial: int
    config: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., best_params: _Optional[_Mapping[str, str]] = ..., best_score: _Optional[float] = ..., trials: _Optional[_Iterable[_Union[TrialRecord, _Mapping]]] = ..., quality: _Optional[_Union[ProxyQuality, _Mapping]] = ..., best_trial: _Optional[int] = ..., config: _Optional[_Mapping[str, str]] = ...) -> None: ...

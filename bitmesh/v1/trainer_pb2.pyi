from bitmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LrSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULE_UNSPECIFIED: _ClassVar[LrSchedule]
    LR_SCHEDULE_CONSTANT: _ClassVar[LrSchedule]
    LR_SCHEDULE_COSINE: _ClassVar[LrSchedule]
    LR_SCHEDULE_STEP: _ClassVar[LrSchedule]

class RangeEstimator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANGE_ESTIMATOR_UNSPECIFIED: _ClassVar[RangeEstimator]
    RANGE_ESTIMATOR_MINMAX: _ClassVar[RangeEstimator]
    RANGE_ESTIMATOR_EMA: _ClassVar[RangeEstimator]
    RANGE_ESTIMATOR_PERCENTILE: _ClassVar[RangeEstimator]
LR_SCHEDULE_UNSPECIFIED: LrSchedule
LR_SCHEDULE_CONSTANT: LrSchedule
LR_SCHEDULE_COSINE: LrSchedule
LR_SCHEDULE_STEP: LrSchedule
RANGE_ESTIMATOR_UNSPECIFIED: RangeEstimator
RANGE_ESTIMATOR_MINMAX: RangeEstimator
RANGE_ESTIMATOR_EMA: RangeEstimator
RANGE_ESTIMATOR_PERCENTILE: RangeEstimator

class TrainingSettings(_message.Message):
    __slots__ = ("steps", "batch_size", "learning_rate", "weight_decay", "schedule", "checkpoint_every", "seed", "data_fraction", "eval_every")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DATA_FRACTION_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    schedule: LrSchedule
    checkpoint_every: int
    seed: int
    data_fraction: float
    eval_every: int
    def __init__(self, steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., schedule: _Optional[_Union[LrSchedule, str]] = ..., checkpoint_every: _Optional[int] = ..., seed: _Optional[int] = ..., data_fraction: _Optional[float] = ..., eval_every: _Optional[int] = ...) -> None: ...

class Distillation(_message.Message):
    __slots__ = ("enabled", "alpha", "temperature")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    alpha: float
    temperature: float
    def __init__(self, enabled: _Optional[bool] = ..., alpha: _Optional[float] = ..., temperature: _Optional[float] = ...) -> None: ...

class QatSpec(_message.Message):
    __slots__ = ("config", "distillation", "fold_bn", "weight_granularity", "activation_range", "range_momentum", "range_percentile", "default_option")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DISTILLATION_FIELD_NUMBER: _ClassVar[int]
    FOLD_BN_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_RANGE_FIELD_NUMBER: _ClassVar[int]
    RANGE_MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    RANGE_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OPTION_FIELD_NUMBER: _ClassVar[int]
    config: _common_pb2.QuantConfig
    distillation: Distillation
    fold_bn: bool
    weight_granularity: _common_pb2.Granularity
    activation_range: RangeEstimator
    range_momentum: float
    range_percentile: float
    default_option: _common_pb2.QuantOption
    def __init__(self, config: _Optional[_Union[_common_pb2.QuantConfig, _Mapping]] = ..., distillation: _Optional[_Union[Distillation, _Mapping]] = ..., fold_bn: _Optional[bool] = ..., weight_granularity: _Optional[_Union[_common_pb2.Granularity, str]] = ..., activation_range: _Optional[_Union[RangeEstimator, str]] = ..., range_momentum: _Optional[float] = ..., range_percentile: _Optional[float] = ..., default_option: _Optional[_Union[_common_pb2.QuantOption, _Mapping]] = ...) -> None: ...

class SearchSpec(_message.Message):
    __slots__ = ("formats", "separate_activation", "target_axis", "cost_target", "cost_beta", "one_sided", "entropy_beta_max", "warmup_fraction", "baseline_momentum", "switchable_clipping", "tie_groups", "policy_learning_rate", "target_option", "weight_granularity", "plain_baseline", "reward_holdout_fraction", "learned_clips", "size_accounting")
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    SEPARATE_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_AXIS_FIELD_NUMBER: _ClassVar[int]
    COST_TARGET_FIELD_NUMBER: _ClassVar[int]
    COST_BETA_FIELD_NUMBER: _ClassVar[int]
    ONE_SIDED_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_BETA_MAX_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    SWITCHABLE_CLIPPING_FIELD_NUMBER: _ClassVar[int]
    TIE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    POLICY_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_OPTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    PLAIN_BASELINE_FIELD_NUMBER: _ClassVar[int]
    REWARD_HOLDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    LEARNED_CLIPS_FIELD_NUMBER: _ClassVar[int]
    SIZE_ACCOUNTING_FIELD_NUMBER: _ClassVar[int]
    formats: _containers.RepeatedCompositeFieldContainer[_common_pb2.NumericFormat]
    separate_activation: bool
    target_axis: _common_pb2.CostAxis
    cost_target: float
    cost_beta: float
    one_sided: bool
    entropy_beta_max: float
    warmup_fraction: float
    baseline_momentum: float
    switchable_clipping: bool
    tie_groups: _containers.RepeatedScalarFieldContainer[str]
    policy_learning_rate: float
    target_option: _common_pb2.QuantOption
    weight_granularity: _common_pb2.Granularity
    plain_baseline: bool
    reward_holdout_fraction: float
    learned_clips: bool
    size_accounting: _common_pb2.SizeAccounting
    def __init__(self, formats: _Optional[_Iterable[_Union[_common_pb2.NumericFormat, _Mapping]]] = ..., separate_activation: _Optional[bool] = ..., target_axis: _Optional[_Union[_common_pb2.CostAxis, str]] = ..., cost_target: _Optional[float] = ..., cost_beta: _Optional[float] = ..., one_sided: _Optional[bool] = ..., entropy_beta_max: _Optional[float] = ..., warmup_fraction: _Optional[float] = ..., baseline_momentum: _Optional[float] = ..., switchable_clipping: _Optional[bool] = ..., tie_groups: _Optional[_Iterable[str]] = ..., policy_learning_rate: _Optional[float] = ..., target_option: _Optional[_Union[_common_pb2.QuantOption, _Mapping]] = ..., weight_granularity: _Optional[_Union[_common_pb2.Granularity, str]] = ..., plain_baseline: _Optional[bool] = ..., reward_holdout_fraction: _Optional[float] = ..., learned_clips: _Optional[bool] = ..., size_accounting: _Optional[_Union[_common_pb2.SizeAccounting, str]] = ...) -> None: ...

class CalibrationSpec(_message.Message):
    __slots__ = ("config", "calibration_batches", "activation_range", "weight_granularity", "default_option")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_RANGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OPTION_FIELD_NUMBER: _ClassVar[int]
    config: _common_pb2.QuantConfig
    calibration_batches: int
    activation_range: RangeEstimator
    weight_granularity: _common_pb2.Granularity
    default_option: _common_pb2.QuantOption
    def __init__(self, config: _Optional[_Union[_common_pb2.QuantConfig, _Mapping]] = ..., calibration_batches: _Optional[int] = ..., activation_range: _Optional[_Union[RangeEstimator, str]] = ..., weight_granularity: _Optional[_Union[_common_pb2.Granularity, str]] = ..., default_option: _Optional[_Union[_common_pb2.QuantOption, _Mapping]] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("model", "dataset", "qat", "search", "calibration", "training", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    QAT_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    dataset: _common_pb2.DatasetRef
    qat: QatSpec
    search: SearchSpec
    calibration: CalibrationSpec
    training: TrainingSettings
    request_id: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., qat: _Optional[_Union[QatSpec, _Mapping]] = ..., search: _Optional[_Union[SearchSpec, _Mapping]] = ..., calibration: _Optional[_Union[CalibrationSpec, _Mapping]] = ..., training: _Optional[_Union[TrainingSettings, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("step", "loss", "accuracy", "entropy", "sampled_cost", "learning_rate", "eval_accuracy", "eval_loss")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_COST_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EVAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    accuracy: float
    entropy: float
    sampled_cost: float
    learning_rate: float
    eval_accuracy: float
    eval_loss: float
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., entropy: _Optional[float] = ..., sampled_cost: _Optional[float] = ..., learning_rate: _Optional[float] = ..., eval_accuracy: _Optional[float] = ..., eval_loss: _Optional[float] = ...) -> None: ...

class TrainingEvent(_message.Message):
    __slots__ = ("status", "latest", "total_steps")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    latest: MetricPoint
    total_steps: int
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., latest: _Optional[_Union[MetricPoint, _Mapping]] = ..., total_steps: _Optional[int] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("accuracy", "loss", "costs", "samples")
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    COSTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    accuracy: float
    loss: float
    costs: _common_pb2.LayerCosts
    samples: int
    def __init__(self, accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., costs: _Optional[_Union[_common_pb2.LayerCosts, _Mapping]] = ..., samples: _Optional[int] = ...) -> None: ...

class TrainingResult(_message.Message):
    __slots__ = ("status", "config", "evaluation", "history", "weights", "config_artifact", "metrics", "final_entropy", "steps_done", "cost_target", "resumed_from", "seconds")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FINAL_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    COST_TARGET_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    config: _common_pb2.QuantConfig
    evaluation: Evaluation
    history: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    weights: _common_pb2.ArtifactRef
    config_artifact: _common_pb2.ArtifactRef
    metrics: _common_pb2.ArtifactRef
    final_entropy: float
    steps_done: int
    cost_target: float
    resumed_from: _containers.RepeatedScalarFieldContainer[int]
    seconds: float
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., config: _Optional[_Union[_common_pb2.QuantConfig, _Mapping]] = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., history: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., weights: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., config_artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., metrics: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., final_entropy: _Optional[float] = ..., steps_done: _Optional[int] = ..., cost_target: _Optional[float] = ..., resumed_from: _Optional[_Iterable[int]] = ..., seconds: _Optional[float] = ...) -> None: ...

from bitmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Objective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECTIVE_UNSPECIFIED: _ClassVar[Objective]
    OBJECTIVE_MIN_OMEGA: _ClassVar[Objective]
    OBJECTIVE_MIN_SIZE: _ClassVar[Objective]
    OBJECTIVE_MIN_BOPS: _ClassVar[Objective]
    OBJECTIVE_MIN_LATENCY: _ClassVar[Objective]

class SolveStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOLVE_STATUS_UNSPECIFIED: _ClassVar[SolveStatus]
    SOLVE_STATUS_OPTIMAL: _ClassVar[SolveStatus]
    SOLVE_STATUS_FEASIBLE: _ClassVar[SolveStatus]
    SOLVE_STATUS_INFEASIBLE: _ClassVar[SolveStatus]
OBJECTIVE_UNSPECIFIED: Objective
OBJECTIVE_MIN_OMEGA: Objective
OBJECTIVE_MIN_SIZE: Objective
OBJECTIVE_MIN_BOPS: Objective
OBJECTIVE_MIN_LATENCY: Objective
SOLVE_STATUS_UNSPECIFIED: SolveStatus
SOLVE_STATUS_OPTIMAL: SolveStatus
SOLVE_STATUS_FEASIBLE: SolveStatus
SOLVE_STATUS_INFEASIBLE: SolveStatus

class ProblemOption(_message.Message):
    __slots__ = ("key", "option", "omega", "costs", "weight_bits")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OPTION_FIELD_NUMBER: _ClassVar[int]
    OMEGA_FIELD_NUMBER: _ClassVar[int]
    COSTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BITS_FIELD_NUMBER: _ClassVar[int]
    key: str
    option: _common_pb2.QuantOption
    omega: float
    costs: _common_pb2.LayerCosts
    weight_bits: int
    def __init__(self, key: _Optional[str] = ..., option: _Optional[_Union[_common_pb2.QuantOption, _Mapping]] = ..., omega: _Optional[float] = ..., costs: _Optional[_Union[_common_pb2.LayerCosts, _Mapping]] = ..., weight_bits: _Optional[int] = ...) -> None: ...

class ProblemLayer(_message.Message):
    __slots__ = ("name", "parameters", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters: int
    options: _containers.RepeatedCompositeFieldContainer[ProblemOption]
    def __init__(self, name: _Optional[str] = ..., parameters: _Optional[int] = ..., options: _Optional[_Iterable[_Union[ProblemOption, _Mapping]]] = ...) -> None: ...

class Tie(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, layers: _Optional[_Iterable[str]] = ...) -> None: ...

class Pin(_message.Message):
    __slots__ = ("layer", "allowed_keys")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_KEYS_FIELD_NUMBER: _ClassVar[int]
    layer: str
    allowed_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, layer: _Optional[str] = ..., allowed_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("layers", "fixed_costs", "fixed_parameters", "fixed_weight_bits", "ties", "pins", "name", "size_accounting")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FIXED_COSTS_FIELD_NUMBER: _ClassVar[int]
    FIXED_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FIXED_WEIGHT_BITS_FIELD_NUMBER: _ClassVar[int]
    TIES_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_ACCOUNTING_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[ProblemLayer]
    fixed_costs: _common_pb2.LayerCosts
    fixed_parameters: int
    fixed_weight_bits: float
    ties: _containers.RepeatedCompositeFieldContainer[Tie]
    pins: _containers.RepeatedCompositeFieldContainer[Pin]
    name: str
    size_accounting: _common_pb2.SizeAccounting
    def __init__(self, layers: _Optional[_Iterable[_Union[ProblemLayer, _Mapping]]] = ..., fixed_costs: _Optional[_Union[_common_pb2.LayerCosts, _Mapping]] = ..., fixed_parameters: _Optional[int] = ..., fixed_weight_bits: _Optional[float] = ..., ties: _Optional[_Iterable[_Union[Tie, _Mapping]]] = ..., pins: _Optional[_Iterable[_Union[Pin, _Mapping]]] = ..., name: _Optional[str] = ..., size_accounting: _Optional[_Union[_common_pb2.SizeAccounting, str]] = ...) -> None: ...

class RegisterProblemRequest(_message.Message):
    __slots__ = ("problem",)
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    problem: Problem
    def __init__(self, problem: _Optional[_Union[Problem, _Mapping]] = ...) -> None: ...

class RegisterProblemResponse(_message.Message):
    __slots__ = ("problem_id", "layers", "options", "options_after_presolve")
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_AFTER_PRESOLVE_FIELD_NUMBER: _ClassVar[int]
    problem_id: str
    layers: int
    options: int
    options_after_presolve: int
    def __init__(self, problem_id: _Optional[str] = ..., layers: _Optional[int] = ..., options: _Optional[int] = ..., options_after_presolve: _Optional[int] = ...) -> None: ...

class SolveRequest(_message.Message):
    __slots__ = ("problem_id", "problem", "budgets", "objective", "max_omega", "time_limit_s")
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_OMEGA_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    problem_id: str
    problem: Problem
    budgets: _common_pb2.Budgets
    objective: Objective
    max_omega: float
    time_limit_s: float
    def __init__(self, problem_id: _Optional[str] = ..., problem: _Optional[_Union[Problem, _Mapping]] = ..., budgets: _Optional[_Union[_common_pb2.Budgets, _Mapping]] = ..., objective: _Optional[_Union[Objective, str]] = ..., max_omega: _Optional[float] = ..., time_limit_s: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("layer", "option_key", "option")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    OPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    OPTION_FIELD_NUMBER: _ClassVar[int]
    layer: str
    option_key: str
    option: _common_pb2.QuantOption
    def __init__(self, layer: _Optional[str] = ..., option_key: _Optional[str] = ..., option: _Optional[_Union[_common_pb2.QuantOption, _Mapping]] = ...) -> None: ...

class Solution(_message.Message):
    __slots__ = ("status", "gap", "assignment", "total_omega", "totals", "avg_weight_bits", "seconds", "engine", "answered_from", "problem_id", "size_accounting")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_OMEGA_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    AVG_WEIGHT_BITS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FROM_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_ACCOUNTING_FIELD_NUMBER: _ClassVar[int]
    status: SolveStatus
    gap: float
    assignment: _containers.RepeatedCompositeFieldContainer[Assignment]
    total_omega: float
    totals: _common_pb2.LayerCosts
    avg_weight_bits: float
    seconds: float
    engine: str
    answered_from: str
    problem_id: str
    size_accounting: _common_pb2.SizeAccounting
    def __init__(self, status: _Optional[_Union[SolveStatus, str]] = ..., gap: _Optional[float] = ..., assignment: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., total_omega: _Optional[float] = ..., totals: _Optional[_Union[_common_pb2.LayerCosts, _Mapping]] = ..., avg_weight_bits: _Optional[float] = ..., seconds: _Optional[float] = ..., engine: _Optional[str] = ..., answered_from: _Optional[str] = ..., problem_id: _Optional[str] = ..., size_accounting: _Optional[_Union[_common_pb2.SizeAccounting, str]] = ...) -> None: ...

class FrontierRequest(_message.Message):
    __slots__ = ("problem_id", "problem", "axis", "constraints", "points", "min_limit", "max_limit", "time_limit_s")
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    MIN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    problem_id: str
    problem: Problem
    axis: _common_pb2.CostAxis
    constraints: _common_pb2.Budgets
    points: int
    min_limit: float
    max_limit: float
    time_limit_s: float
    def __init__(self, problem_id: _Optional[str] = ..., problem: _Optional[_Union[Problem, _Mapping]] = ..., axis: _Optional[_Union[_common_pb2.CostAxis, str]] = ..., constraints: _Optional[_Union[_common_pb2.Budgets, _Mapping]] = ..., points: _Optional[int] = ..., min_limit: _Optional[float] = ..., max_limit: _Optional[float] = ..., time_limit_s: _Optional[float] = ...) -> None: ...

class FrontierResponse(_message.Message):
    __slots__ = ("points", "seconds", "axis", "timed_out")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Solution]
    seconds: float
    axis: _common_pb2.CostAxis
    timed_out: bool
    def __init__(self, points: _Optional[_Iterable[_Union[Solution, _Mapping]]] = ..., seconds: _Optional[float] = ..., axis: _Optional[_Union[_common_pb2.CostAxis, str]] = ..., timed_out: _Optional[bool] = ...) -> None: ...

class WhatIfRequest(_message.Message):
    __slots__ = ("problem_id", "budgets", "time_limit_s")
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    problem_id: str
    budgets: _common_pb2.Budgets
    time_limit_s: float
    def __init__(self, problem_id: _Optional[str] = ..., budgets: _Optional[_Union[_common_pb2.Budgets, _Mapping]] = ..., time_limit_s: _Optional[float] = ...) -> None: ...

class ListLatencyProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LatencyProfileInfo(_message.Message):
    __slots__ = ("name", "kind", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    source: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ListLatencyProfilesResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[LatencyProfileInfo]
    def __init__(self, profiles: _Optional[_Iterable[_Union[LatencyProfileInfo, _Mapping]]] = ...) -> None: ...

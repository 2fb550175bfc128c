from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DrainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAIN_STATE_UNSPECIFIED: _ClassVar[DrainState]
    DRAINING: _ClassVar[DrainState]
    EMPTY: _ClassVar[DrainState]
    DEADLINE_EXCEEDED: _ClassVar[DrainState]
    UNKNOWN_ENDPOINT: _ClassVar[DrainState]
DRAIN_STATE_UNSPECIFIED: DrainState
DRAINING: DrainState
EMPTY: DrainState
DEADLINE_EXCEEDED: DrainState
UNKNOWN_ENDPOINT: DrainState

class DrainRequest(_message.Message):
    __slots__ = ("endpoint", "deadline_s", "reason")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    deadline_s: float
    reason: str
    def __init__(self, endpoint: _Optional[str] = ..., deadline_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class DrainProgress(_message.Message):
    __slots__ = ("endpoint", "state", "remaining", "migrated", "completed", "failed", "elapsed_s")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    MIGRATED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    state: DrainState
    remaining: int
    migrated: int
    completed: int
    failed: int
    elapsed_s: float
    def __init__(self, endpoint: _Optional[str] = ..., state: _Optional[_Union[DrainState, str]] = ..., remaining: _Optional[int] = ..., migrated: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class UndrainRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class UndrainResponse(_message.Message):
    __slots__ = ("was_draining",)
    WAS_DRAINING_FIELD_NUMBER: _ClassVar[int]
    was_draining: bool
    def __init__(self, was_draining: _Optional[bool] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("id", "address", "namespace", "pool", "variant", "model", "accelerator", "healthy", "draining", "running", "waiting", "kv_cache_usage", "inflight_requests", "inflight_tokens", "scrape_age_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_AGE_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    namespace: str
    pool: str
    variant: str
    model: str
    accelerator: str
    healthy: bool
    draining: bool
    running: int
    waiting: int
    kv_cache_usage: float
    inflight_requests: int
    inflight_tokens: int
    scrape_age_s: float
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., namespace: _Optional[str] = ..., pool: _Optional[str] = ..., variant: _Optional[str] = ..., model: _Optional[str] = ..., accelerator: _Optional[str] = ..., healthy: _Optional[bool] = ..., draining: _Optional[bool] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., inflight_requests: _Optional[int] = ..., inflight_tokens: _Optional[int] = ..., scrape_age_s: _Optional[float] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("namespace", "pool", "window_s")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pool: str
    window_s: float
    def __init__(self, namespace: _Optional[str] = ..., pool: _Optional[str] = ..., window_s: _Optional[float] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("count", "p50_s", "p90_s", "p99_s", "mean_s")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    P50_S_FIELD_NUMBER: _ClassVar[int]
    P90_S_FIELD_NUMBER: _ClassVar[int]
    P99_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_S_FIELD_NUMBER: _ClassVar[int]
    count: int
    p50_s: float
    p90_s: float
    p99_s: float
    mean_s: float
    def __init__(self, count: _Optional[int] = ..., p50_s: _Optional[float] = ..., p90_s: _Optional[float] = ..., p99_s: _Optional[float] = ..., mean_s: _Optional[float] = ...) -> None: ...

class VariantStats(_message.Message):
    __slots__ = ("variant", "accelerator", "endpoints", "ready_endpoints", "arrival_rate_rps", "mean_prompt_tokens", "mean_output_tokens", "running", "waiting", "kv_cache_usage", "prefix_hit_rate", "ttft", "tpot", "slo_attainment", "requests", "errors", "inflight_requests")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    READY_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_RATE_RPS_FIELD_NUMBER: _ClassVar[int]
    MEAN_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    TTFT_FIELD_NUMBER: _ClassVar[int]
    TPOT_FIELD_NUMBER: _ClassVar[int]
    SLO_ATTAINMENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    accelerator: str
    endpoints: int
    ready_endpoints: int
    arrival_rate_rps: float
    mean_prompt_tokens: float
    mean_output_tokens: float
    running: float
    waiting: float
    kv_cache_usage: float
    prefix_hit_rate: float
    ttft: LatencyStats
    tpot: LatencyStats
    slo_attainment: float
    requests: int
    errors: int
    inflight_requests: int
    def __init__(self, variant: _Optional[str] = ..., accelerator: _Optional[str] = ..., endpoints: _Optional[int] = ..., ready_endpoints: _Optional[int] = ..., arrival_rate_rps: _Optional[float] = ..., mean_prompt_tokens: _Optional[float] = ..., mean_output_tokens: _Optional[float] = ..., running: _Optional[float] = ..., waiting: _Optional[float] = ..., kv_cache_usage: _Optional[float] = ..., prefix_hit_rate: _Optional[float] = ..., ttft: _Optional[_Union[LatencyStats, _Mapping]] = ..., tpot: _Optional[_Union[LatencyStats, _Mapping]] = ..., slo_attainment: _Optional[float] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., inflight_requests: _Optional[int] = ...) -> None: ...

class ClassStats(_message.Message):
    __slots__ = ("slo_class", "requests", "slo_attainment", "shed", "downgraded", "queued")
    SLO_CLASS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SLO_ATTAINMENT_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    DOWNGRADED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    slo_class: str
    requests: int
    slo_attainment: float
    shed: int
    downgraded: int
    queued: int
    def __init__(self, slo_class: _Optional[str] = ..., requests: _Optional[int] = ..., slo_attainment: _Optional[float] = ..., shed: _Optional[int] = ..., downgraded: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class PoolStats(_message.Message):
    __slots__ = ("namespace", "pool", "model", "variants", "classes", "unplaced_requests", "queued_requests")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pool: str
    model: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantStats]
    classes: _containers.RepeatedCompositeFieldContainer[ClassStats]
    unplaced_requests: int
    queued_requests: int
    def __init__(self, namespace: _Optional[str] = ..., pool: _Optional[str] = ..., model: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantStats, _Mapping]]] = ..., classes: _Optional[_Iterable[_Union[ClassStats, _Mapping]]] = ..., unplaced_requests: _Optional[int] = ..., queued_requests: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("window_s", "pools")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    window_s: float
    pools: _containers.RepeatedCompositeFieldContainer[PoolStats]
    def __init__(self, window_s: _Optional[float] = ..., pools: _Optional[_Iterable[_Union[PoolStats, _Mapping]]] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("key", "data")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    data: bytes
    def __init__(self, key: _Optional[bytes] = ..., data: _Optional[bytes] = ...) -> None: ...

class RangeSpec(_message.Message):
    __slots__ = ("start", "stop", "limit")
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    stop: bytes
    limit: int
    def __init__(self, start: _Optional[bytes] = ..., stop: _Optional[bytes] = ..., limit: _Optional[int] = ...) -> None: ...

class OpStats(_message.Message):
    __slots__ = ("op", "count", "mean_service_us", "errors")
    OP_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_SERVICE_US_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    op: str
    count: int
    mean_service_us: float
    errors: int
    def __init__(self, op: _Optional[str] = ..., count: _Optional[int] = ..., mean_service_us: _Optional[float] = ..., errors: _Optional[int] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("ops", "keys", "connections", "uptime_s", "last_op", "role", "height", "received", "applied", "sent_count", "sent_bytes", "version", "data_dir_bytes", "zk_state", "member", "unacked_age_s", "succ_rtt_s", "pred_rtt_s")
    OPS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    LAST_OP_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_DIR_BYTES_FIELD_NUMBER: _ClassVar[int]
    ZK_STATE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    UNACKED_AGE_S_FIELD_NUMBER: _ClassVar[int]
    SUCC_RTT_S_FIELD_NUMBER: _ClassVar[int]
    PRED_RTT_S_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[OpStats]
    keys: int
    connections: int
    uptime_s: float
    last_op: int
    role: str
    height: int
    received: int
    applied: int
    sent_count: int
    sent_bytes: int
    version: str
    data_dir_bytes: int
    zk_state: str
    member: str
    unacked_age_s: float
    succ_rtt_s: float
    pred_rtt_s: float
    def __init__(self, ops: _Optional[_Iterable[_Union[OpStats, _Mapping]]] = ..., keys: _Optional[int] = ..., connections: _Optional[int] = ..., uptime_s: _Optional[float] = ..., last_op: _Optional[int] = ..., role: _Optional[str] = ..., height: _Optional[int] = ..., received: _Optional[int] = ..., applied: _Optional[int] = ..., sent_count: _Optional[int] = ..., sent_bytes: _Optional[int] = ..., version: _Optional[str] = ..., data_dir_bytes: _Optional[int] = ..., zk_state: _Optional[str] = ..., member: _Optional[str] = ..., unacked_age_s: _Optional[float] = ..., succ_rtt_s: _Optional[float] = ..., pred_rtt_s: _Optional[float] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("seq", "is_put", "key", "data", "client_id", "request_id", "found", "epoch", "ack_below", "rmw", "rmw_applied", "rmw_found", "rmw_old", "rmw_number", "rmw_error", "group", "skip", "split_at")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    IS_PUT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACK_BELOW_FIELD_NUMBER: _ClassVar[int]
    RMW_FIELD_NUMBER: _ClassVar[int]
    RMW_APPLIED_FIELD_NUMBER: _ClassVar[int]
    RMW_FOUND_FIELD_NUMBER: _ClassVar[int]
    RMW_OLD_FIELD_NUMBER: _ClassVar[int]
    RMW_NUMBER_FIELD_NUMBER: _ClassVar[int]
    RMW_ERROR_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    SPLIT_AT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    is_put: bool
    key: bytes
    data: bytes
    client_id: str
    request_id: int
    found: bool
    epoch: int
    ack_below: int
    rmw: bool
    rmw_applied: bool
    rmw_found: bool
    rmw_old: bytes
    rmw_number: int
    rmw_error: str
    group: _containers.RepeatedCompositeFieldContainer[Update]
    skip: bool
    split_at: bytes
    def __init__(self, seq: _Optional[int] = ..., is_put: _Optional[bool] = ..., key: _Optional[bytes] = ..., data: _Optional[bytes] = ..., client_id: _Optional[str] = ..., request_id: _Optional[int] = ..., found: _Optional[bool] = ..., epoch: _Optional[int] = ..., ack_below: _Optional[int] = ..., rmw: _Optional[bool] = ..., rmw_applied: _Optional[bool] = ..., rmw_found: _Optional[bool] = ..., rmw_old: _Optional[bytes] = ..., rmw_number: _Optional[int] = ..., rmw_error: _Optional[str] = ..., group: _Optional[_Iterable[_Union[Update, _Mapping]]] = ..., skip: _Optional[bool] = ..., split_at: _Optional[bytes] = ...) -> None: ...

class EpochMark(_message.Message):
    __slots__ = ("first_seq", "epoch")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    epoch: int
    def __init__(self, first_seq: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class ChainHello(_message.Message):
    __slots__ = ("sender", "config", "address", "last_op", "epoch", "marks", "max_frame", "max_value", "lease_ms", "chain")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_OP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MARKS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    sender: str
    config: int
    address: str
    last_op: int
    epoch: int
    marks: _containers.RepeatedCompositeFieldContainer[EpochMark]
    max_frame: int
    max_value: int
    lease_ms: int
    chain: str
    def __init__(self, sender: _Optional[str] = ..., config: _Optional[int] = ..., address: _Optional[str] = ..., last_op: _Optional[int] = ..., epoch: _Optional[int] = ..., marks: _Optional[_Iterable[_Union[EpochMark, _Mapping]]] = ..., max_frame: _Optional[int] = ..., max_value: _Optional[int] = ..., lease_ms: _Optional[int] = ..., chain: _Optional[str] = ...) -> None: ...

class ChainAuth(_message.Message):
    __slots__ = ("step", "identity", "nonce", "config", "mac", "chain")
    STEP_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    step: int
    identity: str
    nonce: bytes
    config: int
    mac: bytes
    chain: str
    def __init__(self, step: _Optional[int] = ..., identity: _Optional[str] = ..., nonce: _Optional[bytes] = ..., config: _Optional[int] = ..., mac: _Optional[bytes] = ..., chain: _Optional[str] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("entries", "clients", "total", "last_op", "done", "delta", "marks")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_OP_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MARKS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    clients: _containers.RepeatedCompositeFieldContainer[Update]
    total: int
    last_op: int
    done: bool
    delta: bool
    marks: _containers.RepeatedCompositeFieldContainer[EpochMark]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., clients: _Optional[_Iterable[_Union[Update, _Mapping]]] = ..., total: _Optional[int] = ..., last_op: _Optional[int] = ..., done: _Optional[bool] = ..., delta: _Optional[bool] = ..., marks: _Optional[_Iterable[_Union[EpochMark, _Mapping]]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("opcode", "c_type", "result", "entry", "keys", "values", "error", "found", "op_n", "range", "stats", "client_id", "request_id", "hello", "updates", "snapshot", "retry", "hops", "local", "auth", "token", "ack_below", "resend", "cond", "expect", "delete", "want_old", "applied", "delta", "number", "chain", "map_version", "ops", "all_or_nothing", "offset", "float_delta", "watch_keys", "watch_ops", "aborted")
    class Opcode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_BAD: _ClassVar[Message.Opcode]
        OP_SIZE: _ClassVar[Message.Opcode]
        OP_HEIGHT: _ClassVar[Message.Opcode]
        OP_DEL: _ClassVar[Message.Opcode]
        OP_GET: _ClassVar[Message.Opcode]
        OP_PUT: _ClassVar[Message.Opcode]
        OP_GETKEYS: _ClassVar[Message.Opcode]
        OP_GETVALUES: _ClassVar[Message.Opcode]
        OP_VERIFY: _ClassVar[Message.Opcode]
        OP_ERROR: _ClassVar[Message.Opcode]
        OP_STATS: _ClassVar[Message.Opcode]
        OP_RANGE: _ClassVar[Message.Opcode]
        OP_AUTH: _ClassVar[Message.Opcode]
        OP_CAS: _ClassVar[Message.Opcode]
        OP_INCR: _ClassVar[Message.Opcode]
        OP_APPEND: _ClassVar[Message.Opcode]
        OP_BACKUP: _ClassVar[Message.Opcode]
        OP_SETRANGE: _ClassVar[Message.Opcode]
        OP_INCRBYFLOAT: _ClassVar[Message.Opcode]
        OP_RENAME: _ClassVar[Message.Opcode]
        OP_MULTI: _ClassVar[Message.Opcode]
        OP_WATCH: _ClassVar[Message.Opcode]
        OP_CHAIN_HELLO: _ClassVar[Message.Opcode]
        OP_CHAIN_UPDATE: _ClassVar[Message.Opcode]
        OP_CHAIN_ACK: _ClassVar[Message.Opcode]
        OP_CHAIN_JOIN: _ClassVar[Message.Opcode]
        OP_CHAIN_SNAPSHOT: _ClassVar[Message.Opcode]
        OP_CHAIN_AUTH: _ClassVar[Message.Opcode]
        OP_CHAIN_PING: _ClassVar[Message.Opcode]
    OP_BAD: Message.Opcode
    OP_SIZE: Message.Opcode
    OP_HEIGHT: Message.Opcode
    OP_DEL: Message.Opcode
    OP_GET: Message.Opcode
    OP_PUT: Message.Opcode
    OP_GETKEYS: Message.Opcode
    OP_GETVALUES: Message.Opcode
    OP_VERIFY: Message.Opcode
    OP_ERROR: Message.Opcode
    OP_STATS: Message.Opcode
    OP_RANGE: Message.Opcode
    OP_AUTH: Message.Opcode
    OP_CAS: Message.Opcode
    OP_INCR: Message.Opcode
    OP_APPEND: Message.Opcode
    OP_BACKUP: Message.Opcode
    OP_SETRANGE: Message.Opcode
    OP_INCRBYFLOAT: Message.Opcode
    OP_RENAME: Message.Opcode
    OP_MULTI: Message.Opcode
    OP_WATCH: Message.Opcode
    OP_CHAIN_HELLO: Message.Opcode
    OP_CHAIN_UPDATE: Message.Opcode
    OP_CHAIN_ACK: Message.Opcode
    OP_CHAIN_JOIN: Message.Opcode
    OP_CHAIN_SNAPSHOT: Message.Opcode
    OP_CHAIN_AUTH: Message.Opcode
    OP_CHAIN_PING: Message.Opcode
    class CType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CT_BAD: _ClassVar[Message.CType]
        CT_KEY: _ClassVar[Message.CType]
        CT_VALUE: _ClassVar[Message.CType]
        CT_ENTRY: _ClassVar[Message.CType]
        CT_KEYS: _ClassVar[Message.CType]
        CT_VALUES: _ClassVar[Message.CType]
        CT_RESULT: _ClassVar[Message.CType]
        CT_NONE: _ClassVar[Message.CType]
        CT_ENTRIES: _ClassVar[Message.CType]
        CT_STATS: _ClassVar[Message.CType]
        CT_RANGE: _ClassVar[Message.CType]
        CT_CHAIN: _ClassVar[Message.CType]
        CT_SNAPSHOT: _ClassVar[Message.CType]
    CT_BAD: Message.CType
    CT_KEY: Message.CType
    CT_VALUE: Message.CType
    CT_ENTRY: Message.CType
    CT_KEYS: Message.CType
    CT_VALUES: Message.CType
    CT_RESULT: Message.CType
    CT_NONE: Message.CType
    CT_ENTRIES: Message.CType
    CT_STATS: Message.CType
    CT_RANGE: Message.CType
    CT_CHAIN: Message.CType
    CT_SNAPSHOT: Message.CType
    OPCODE_FIELD_NUMBER: _ClassVar[int]
    C_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    OP_N_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACK_BELOW_FIELD_NUMBER: _ClassVar[int]
    RESEND_FIELD_NUMBER: _ClassVar[int]
    COND_FIELD_NUMBER: _ClassVar[int]
    EXPECT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    WANT_OLD_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    ALL_OR_NOTHING_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FLOAT_DELTA_FIELD_NUMBER: _ClassVar[int]
    WATCH_KEYS_FIELD_NUMBER: _ClassVar[int]
    WATCH_OPS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    opcode: Message.Opcode
    c_type: Message.CType
    result: int
    entry: Entry
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    error: str
    found: bool
    op_n: int
    range: RangeSpec
    stats: Stats
    client_id: str
    request_id: int
    hello: ChainHello
    updates: _containers.RepeatedCompositeFieldContainer[Update]
    snapshot: SnapshotChunk
    retry: bool
    hops: int
    local: bool
    auth: ChainAuth
    token: bytes
    ack_below: int
    resend: bool
    cond: int
    expect: bytes
    delete: bool
    want_old: bool
    applied: bool
    delta: int
    number: int
    chain: str
    map_version: int
    ops: _containers.RepeatedCompositeFieldContainer[Message]
    all_or_nothing: bool
    offset: int
    float_delta: str
    watch_keys: _containers.RepeatedScalarFieldContainer[bytes]
    watch_ops: _containers.RepeatedScalarFieldContainer[int]
    aborted: bool
    def __init__(self, opcode: _Optional[_Union[Message.Opcode, str]] = ..., c_type: _Optional[_Union[Message.CType, str]] = ..., result: _Optional[int] = ..., entry: _Optional[_Union[Entry, _Mapping]] = ..., keys: _Optional[_Iterable[bytes]] = ..., values: _Optional[_Iterable[bytes]] = ..., error: _Optional[str] = ..., found: _Optional[bool] = ..., op_n: _Optional[int] = ..., range: _Optional[_Union[RangeSpec, _Mapping]] = ..., stats: _Optional[_Union[Stats, _Mapping]] = ..., client_id: _Optional[str] = ..., request_id: _Optional[int] = ..., hello: _Optional[_Union[ChainHello, _Mapping]] = ..., updates: _Optional[_Iterable[_Union[Update, _Mapping]]] = ..., snapshot: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., retry: _Optional[bool] = ..., hops: _Optional[int] = ..., local: _Optional[bool] = ..., auth: _Optional[_Union[ChainAuth, _Mapping]] = ..., token: _Optional[bytes] = ..., ack_below: _Optional[int] = ..., resend: _Optional[bool] = ..., cond: _Optional[int] = ..., expect: _Optional[bytes] = ..., delete: _Optional[bool] = ..., want_old: _Optional[bool] = ..., applied: _Optional[bool] = ..., delta: _Optional[int] = ..., number: _Optional[int] = ..., chain: _Optional[str] = ..., map_version: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., all_or_nothing: _Optional[bool] = ..., offset: _Optional[int] = ..., float_delta: _Optional[str] = ..., watch_keys: _Optional[_Iterable[bytes]] = ..., watch_ops: _Optional[_Iterable[int]] = ..., aborted: _Optional[bool] = ...) -> None: ...

"""The versioned message set of the cocoon wire protocol, and its encoding.

Encoding: each message is one MessagePack array ``[type_id, field1, field2, ...]``.
MessagePack is chosen over TL (COCOON's choice) because it has a complete public spec, a
fast and fuzzed C implementation, distinguishes bytes from text and ints from bools
natively, and needs no code generation; the *schema* is ours and strict: this module knows
every message's fields and their exact types, and :func:`decode` rejects anything else
(unknown type id, wrong arity, wrong field type, out-of-range integer) with
:class:`~cocoon.errors.ProtocolError`.  Unknown fields are never tolerated silently;
evolution happens by bumping :data:`PROTOCOL_VERSION`, checked in the ``Hello`` exchange.

The one exception is a message's *optional tail* (``OPTIONAL_TAIL``: its last N fields, each
with a default): it is left off the wire when every field in it has its default, so the
message encodes byte for byte as it did before the tail existed and peers that predate it
still decode it; the decoder takes the array with the whole tail or without it, and refuses
a tail that is present but all defaults, so every message keeps exactly one encoding.

Request and response bodies travel as opaque ``bytes`` (the OpenAI JSON), so a hop that only
routes never parses a prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final

import msgpack

from cocoon.errors import PricingError, ProtocolError, RequestError, request_error_from_code
from cocoon.usage import Usage
from cocoon.wire.framing import DEFAULT_MAX_FRAME

__all__ = [
    "FEATURE_LORA",
    "FEATURE_TRAIN",
    "MAX_REQUEST_BODY",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Announce",
    "Cancel",
    "Catalog",
    "CatalogEntry",
    "Chunk",
    "Credit",
    "End",
    "Error",
    "Head",
    "Hello",
    "JobReport",
    "JobReports",
    "Message",
    "Payment",
    "Ping",
    "Pong",
    "Request",
    "Roster",
    "Route",
    "Sealed",
    "Statement",
    "WorkerInfo",
    "decode",
    "encode",
]

PROTOCOL_VERSION: Final = 5
"""2: a stream's ``Chunk`` carries whole server-sent events, not one bare JSON object.
3: sealed requests (``Request.seal_size``, ``Route``, ``Sealed``), workers' certificates in
``Announce``, receipts in ``End``. 4: content keys wrapped under per-worker session keys
(140 bytes each). 5: workers' features (``Announce.features``, ``WorkerInfo.features``:
training, LoRA adapters) and the feature a request needs (``Request.requires``)."""

FEATURE_TRAIN: Final = "train"
"""A worker that runs fine-tuning jobs (endpoint ``fine_tune``) for the models it serves."""
FEATURE_LORA: Final = "lora"
"""A worker that applies a LoRA adapter carried in a request to the model it serves."""

_U64_MAX: Final = 2**64 - 1
_MAX_STR: Final = 4096  # names, codes, messages: never anything large
_MAX_LIST: Final = 4096

SEAL_KEYS_MAX: Final = 9329
"""The most bytes of a request's wrapped keys (``cocoon.crypto.seal.SEAL_KEYS_OVERHEAD``:
eight workers with ids of at most 1024 bytes)."""
REQUEST_OVERHEAD: Final = 62 + 2 * (3 + 4 * _MAX_STR) + 48 + 5 + SEAL_KEYS_MAX
"""The most bytes a ``Request`` frame holds besides its body: the msgpack array and type,
seven u64 fields at 9 bytes (one spare), a bool, the body's bin32 header, two strings
(endpoint, model) of at most ``_MAX_STR`` characters at 4 UTF-8 bytes each, 3-byte headers,
what sealing adds to a body (48 bytes: ``cocoon.crypto.seal.SEAL_OVERHEAD``) and its wrapped
keys with their bin32 header."""
MAX_REQUEST_BODY: Final = DEFAULT_MAX_FRAME - REQUEST_OVERHEAD
"""The largest request body that always fits one default-sized frame, sealed or not: the
one limit the client's HTTP surface enforces (413 above it), so a body it accepts can
always be sent."""


@dataclass(frozen=True, slots=True)
class Hello:
    """First message in each direction. ``window`` is how many unacknowledged ``Chunk``s the
    sender accepts per stream; ``max_frame`` the largest frame payload it accepts.
    ``binding`` ties this Hello to the secure channel it travels on: over RA-TLS, a signature
    by the sender's certificate key over the channel's TLS exporter, role and node id
    (``attestation.ratls.binding_payload``); empty over plain TCP."""

    TYPE: ClassVar[int] = 1
    version: int
    role: str
    node_id: str
    max_frame: int
    window: int
    binding: bytes = b""


@dataclass(frozen=True, slots=True)
class Announce:
    """Worker -> proxy: what it serves and how many requests it runs at once. Re-sent on change."""

    TYPE: ClassVar[int] = 2
    OPTIONAL_TAIL: ClassVar[int] = 4
    models: tuple[str, ...]
    max_concurrent: int
    engine: str
    channel: str = ""
    """The worker's on-chain payment channel (funded by the proxy), if it has one."""
    coefficient: int = 0
    """The worker's price coefficient (COCOON's worker coefficient, 1000 = 1.0x): its
    requests are billed at it and routing weighs it. 0: not declared (the proxy's
    ``billing.worker_coefficient``). Sent over the worker's attested channel, so it is the
    worker's own word."""
    certificate: bytes = b""
    """The worker's current certificate (DER): its claims carry the key clients seal
    requests to, bound by its evidence. The proxy checks it and hands it to each client
    whose request the worker is chosen for (``Route``); re-announced when renewed."""
    features: tuple[str, ...] = ()
    """What it offers besides inference (:data:`FEATURE_TRAIN`, :data:`FEATURE_LORA`): a
    request that ``requires`` one is routed only to workers that announce it."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    model: str
    workers: int
    active: int
    capacity: int
    price_min: int = 0
    """What its cheapest worker asks, in nanoTON per million tokens (at 1.0x token
    multipliers); 0 with billing off."""
    price_max: int = 0


@dataclass(frozen=True, slots=True)
class Catalog:
    """Proxy -> client: the models currently served, pushed whenever it changes, and (when
    it bills) the proxy's voucher key, so a client with channels to several proxies binds
    the one whose payee key it is."""

    TYPE: ClassVar[int] = 3
    OPTIONAL_TAIL: ClassVar[int] = 1
    entries: tuple[CatalogEntry, ...]
    payee_pubkey: bytes = b""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    node_id: str
    tier: str  # attestation tier the proxy verified: unattested, fake-tdx, tdx
    image_hash: bytes  # empty when unattested
    models: tuple[str, ...]
    certificate: bytes = b""  # as the worker announced it: clients seal requests to it
    features: tuple[str, ...] = ()  # as the worker announced them


@dataclass(frozen=True, slots=True)
class Roster:
    """Proxy -> client: the connected workers and their verified attestation."""

    TYPE: ClassVar[int] = 13
    workers: tuple[WorkerInfo, ...]


@dataclass(frozen=True, slots=True)
class Statement:
    """Proxy -> client or worker after each settlement: the newest signed cumulative voucher
    for its account (``cocoon.ledger.vouchers.SignedVoucher`` bytes) and the account's
    figures in nanoTON, so each side keeps and checks its own copy."""

    TYPE: ClassVar[int] = 14
    OPTIONAL_TAIL: ClassVar[int] = 1
    voucher: bytes
    deposited: int
    charged: int
    reserved: int
    earned: int
    chain_voucher: bytes = b""
    """To a worker with an on-chain channel: the same cumulative amount as a payout voucher
    its channel contract accepts (``cocoon.chain.vouchers.ChainVoucher`` message body BOC)."""


@dataclass(frozen=True, slots=True)
class Payment:
    """Client -> proxy: the client's own signature over what it has been charged so far, a
    charge voucher its channel contract accepts (``ChainVoucher`` message body BOC). Sent on
    connect (binding the connection to ``channel``: only the channel's key can sign) and
    after each statement; the proxy redeems the newest one on chain."""

    TYPE: ClassVar[int] = 15
    channel: str
    voucher: bytes


@dataclass(frozen=True, slots=True)
class Request:
    """Opens stream ``req_id`` (chosen by the requester, unique among its open streams).
    ``body`` is the OpenAI request JSON; ``endpoint`` is ``chat`` or ``completions``.
    ``max_tokens`` is the generation cap (0: none given); the proxy reserves funds for it and
    the worker enforces it, so hops that route never parse the body.

    ``ticket`` (proxy -> worker, the optional tail) names the proxy's reservation for the
    request; the worker quotes it in its :class:`JobReports` after a lost connection, so a
    proxy that died mid-request can still charge what was generated. 0: none (unbilled).
    ``max_coefficient`` (client -> proxy, the optional tail) is the app's price cap: only
    workers whose coefficient is at most this serve it. 0: no cap.

    ``seal_size`` and ``seal_keys`` (the optional tail): the body is sealed
    (``cocoon.crypto.seal``; ``seal_size`` is its length) and ``seal_keys`` holds its
    content key wrapped to each worker that may open it. Client -> proxy: the workers the
    client accepts for it; the proxy routes it to one of them, or to another after a
    :class:`Route` the client answers with that one's wrapped key (:class:`Sealed`). Proxy
    -> worker: that worker's key alone. 0 and empty: the body travels in the clear.

    ``requires`` (the optional tail): the feature a worker must announce to be routed this
    request (:data:`FEATURE_TRAIN` for a fine-tuning job, :data:`FEATURE_LORA` for a request
    carrying an adapter); empty: any worker serving the model."""

    TYPE: ClassVar[int] = 4
    OPTIONAL_TAIL: ClassVar[int] = 5
    req_id: int
    endpoint: str
    model: str
    stream: bool
    timeout_ms: int
    body: bytes
    max_tokens: int = 0
    ticket: int = 0
    max_coefficient: int = 0
    seal_size: int = 0
    seal_keys: bytes = b""
    requires: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """Proxy -> client, on a sealed request's stream: ``worker``, whom the request's keys do
    not name (it joined after the client's roster, say), was chosen for it, and this is its
    certificate (DER). The client checks it against its own policy and answers with the
    content key wrapped to the key in its claims (:class:`Sealed`)."""

    TYPE: ClassVar[int] = 17
    req_id: int
    worker: str
    certificate: bytes


@dataclass(frozen=True, slots=True)
class Sealed:
    """Client -> proxy: the request's content key wrapped to ``worker``
    (``cocoon.crypto.seal``), answering a :class:`Route`. The proxy forwards it with the
    sealed body, and drops one for a worker the request no longer goes to."""

    TYPE: ClassVar[int] = 18
    req_id: int
    worker: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Head:
    """Responder accepted the request and generation started; ``worker`` names who serves it."""

    TYPE: ClassVar[int] = 5
    req_id: int
    worker: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """The next bytes of the app's answer, exactly as it gets them: for a stream, one or
    more whole server-sent events (``data: {json}\n\n`` each: the worker frames them, so
    a hop may join chunks that wait together into one and nobody frames them twice); for a
    non-streamed request, the JSON response (or a piece of it)."""

    TYPE: ClassVar[int] = 6
    req_id: int
    data: bytes


def _usage_of(msg: End | Error | JobReport) -> Usage:
    """The message's token counts as the one usage type. The schema checks each count's
    type and range; counts that contradict each other (cached above prompt, reasoning above
    completion) break the protocol when they are read as usage."""
    try:
        return Usage(msg.prompt_tokens, msg.completion_tokens, msg.cached_tokens,
                     msg.reasoning_tokens)
    except PricingError as exc:
        raise ProtocolError(f"{type(msg).__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class End:
    """Stream finished; token counts exactly as the engine counted them (their fields are
    :class:`~cocoon.usage.Usage`'s, flat on the wire; ``usage`` gives them back as one)."""

    TYPE: ClassVar[int] = 7
    OPTIONAL_TAIL: ClassVar[int] = 1
    req_id: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    receipt: bytes = b""
    """Worker -> proxy: the worker's signed receipt of this completion; proxy -> client:
    the receipt with the proxy's countersignature (``cocoon.attestation.receipt``)."""

    @classmethod
    def of(cls, req_id: int, usage: Usage, receipt: bytes = b"") -> End:
        return cls(req_id, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                   usage.reasoning_tokens, receipt)

    @property
    def usage(self) -> Usage:
        return _usage_of(self)


@dataclass(frozen=True, slots=True)
class Error:
    """Stream failed or was cancelled. ``code`` is a :class:`~cocoon.errors.RequestError`
    code. The token counts are what the worker generated before the stream ended (counted
    like ``End``'s), so a failed or cancelled request is billed for them; all zero when
    nothing was generated. They are the optional tail: absent on the wire when all zero."""

    TYPE: ClassVar[int] = 8
    OPTIONAL_TAIL: ClassVar[int] = 4
    req_id: int
    code: str
    message: str
    param: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def of(cls, req_id: int, err: RequestError, usage: Usage | None = None) -> Error:
        """The Error that tells the requester ``err`` (its code, message and param), with
        the usage generated before the stream ended."""
        u = usage or _NO_USAGE
        return cls(req_id, err.code, err.message, err.param or "", u.prompt_tokens,
                   u.completion_tokens, u.cached_tokens, u.reasoning_tokens)

    @property
    def usage(self) -> Usage:
        return _usage_of(self)

    @property
    def has_usage(self) -> bool:
        """The worker reported tokens it generated before the stream ended."""
        return bool(self.prompt_tokens or self.completion_tokens or self.cached_tokens
                    or self.reasoning_tokens)

    def to_exception(self) -> RequestError:
        """The typed error this code names (see :func:`cocoon.errors.request_error_from_code`)."""
        return request_error_from_code(self.code, self.message, self.param or None)


_NO_USAGE: Final = Usage()


@dataclass(frozen=True, slots=True)
class JobReport:
    """The usage of one job the worker ran under ``ticket`` (see ``Request.ticket``), counted
    like ``End``'s: to the end, or to where the job was cut off."""

    ticket: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int

    @classmethod
    def of(cls, ticket: int, usage: Usage) -> JobReport:
        return cls(ticket, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                   usage.reasoning_tokens)

    @property
    def usage(self) -> Usage:
        return _usage_of(self)


@dataclass(frozen=True, slots=True)
class JobReports:
    """Worker -> proxy, first thing after it reconnects: the usage of the ticketed jobs it
    ran on the lost connection (the most recent ones, at most 4096). A proxy that restarted
    charges with them the requests it was relaying when it died (their reservations are
    still open); one that did not has settled them already and ignores them."""

    TYPE: ClassVar[int] = 16
    jobs: tuple[JobReport, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Requester gave up on the stream; the responder stops and still ends it with Error/End."""

    TYPE: ClassVar[int] = 9
    req_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Credit:
    """Receiver of chunks allows ``n`` more chunks on stream ``req_id``."""

    TYPE: ClassVar[int] = 10
    req_id: int
    n: int


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = 11
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[int] = 12
    nonce: int


Message = (
    Hello | Announce | Catalog | Request | Head | Chunk | End | Error | Cancel | Credit | Ping
    | Pong | Roster | Statement | Payment | JobReports | Route | Sealed
)

MESSAGE_TYPES: Final[dict[int, type[Any]]] = {
    cls.TYPE: cls
    for cls in (Hello, Announce, Catalog, Request, Head, Chunk, End, Error, Cancel, Credit, Ping,
                Pong, Roster, Statement, Payment, JobReports, Route, Sealed)
}


# --- field validators: value from msgpack -> checked value (or ProtocolError) -------------

Validator = Callable[[Any], Any]


def _u64(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= _U64_MAX:
        raise ProtocolError(f"expected unsigned 64-bit integer, got {type(v).__name__}")
    return v


def _str(v: Any) -> str:
    if type(v) is not str or len(v) > _MAX_STR:
        raise ProtocolError(f"expected string of at most {_MAX_STR} chars")
    return v


def _bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise ProtocolError(f"expected bytes, got {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise ProtocolError(f"expected bool, got {type(v).__name__}")
    return v


def _str_tuple(v: Any) -> tuple[str, ...]:
    if type(v) is not list or len(v) > _MAX_LIST:
        raise ProtocolError("expected list of strings")
    return tuple(_str(x) for x in v)


def _catalog_entries(v: Any) -> tuple[CatalogEntry, ...]:
    if type(v) is not list or len(v) > _MAX_LIST:
        raise ProtocolError("expected list of catalog entries")
    out = []
    for item in v:
        if type(item) is not list or len(item) != 6:
            raise ProtocolError("catalog entry must be [model, workers, active, capacity, "
                                "price_min, price_max]")
        out.append(CatalogEntry(_str(item[0]), *(_u64(x) for x in item[1:])))
    return tuple(out)


def _worker_infos(v: Any) -> tuple[WorkerInfo, ...]:
    if type(v) is not list or len(v) > _MAX_LIST:
        raise ProtocolError("expected list of worker infos")
    out = []
    for item in v:
        if type(item) is not list or len(item) != 6:
            raise ProtocolError("worker info must be [node_id, tier, image_hash, models, "
                                "certificate, features]")
        out.append(WorkerInfo(_str(item[0]), _str(item[1]), _bytes(item[2]),
                              _str_tuple(item[3]), _bytes(item[4]), _str_tuple(item[5])))
    return tuple(out)


def _job_reports(v: Any) -> tuple[JobReport, ...]:
    if type(v) is not list or len(v) > _MAX_LIST:
        raise ProtocolError("expected list of job reports")
    out = []
    for item in v:
        if type(item) is not list or len(item) != 5:
            raise ProtocolError("job report must be [ticket, prompt, completion, cached, "
                                "reasoning]")
        out.append(JobReport(*(_u64(x) for x in item)))
    return tuple(out)


_BY_ANNOTATION: Final[dict[str, Validator]] = {
    "int": _u64,
    "str": _str,
    "bytes": _bytes,
    "bool": _bool,
    "tuple[str, ...]": _str_tuple,
    "tuple[CatalogEntry, ...]": _catalog_entries,
    "tuple[WorkerInfo, ...]": _worker_infos,
    "tuple[JobReport, ...]": _job_reports,
}

_SCHEMA: Final[dict[int, tuple[type[Any], tuple[Validator, ...]]]] = {
    tid: (cls, tuple(_BY_ANNOTATION[str(f.type)] for f in fields(cls)))
    for tid, cls in MESSAGE_TYPES.items()
}

# type id -> the defaults of its optional tail, in field order (see the module docstring)
_TAILS: Final[dict[int, tuple[Any, ...]]] = {
    tid: tuple(f.default for f in fields(cls)[len(fields(cls)) - cls.OPTIONAL_TAIL:])
    for tid, cls in MESSAGE_TYPES.items() if getattr(cls, "OPTIONAL_TAIL", 0)
}


def _to_wire(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, CatalogEntry):
        return [value.model, value.workers, value.active, value.capacity, value.price_min,
                value.price_max]
    if isinstance(value, WorkerInfo):
        return [value.node_id, value.tier, value.image_hash, list(value.models),
                value.certificate, list(value.features)]
    if isinstance(value, JobReport):
        return [value.ticket, value.prompt_tokens, value.completion_tokens, value.cached_tokens,
                value.reasoning_tokens]
    return value


_packer = msgpack.Packer(use_bin_type=True)


def encode(msg: Message) -> bytes:
    """Serialise one message (without framing)."""
    if type(msg) is Chunk:  # hot path
        return _packer.pack((6, msg.req_id, msg.data))  # type: ignore[no-any-return]
    kept = fields(msg)
    tail = _TAILS.get(msg.TYPE, ())
    if tail and tuple(getattr(msg, f.name) for f in kept[-len(tail):]) == tail:
        kept = kept[:-len(tail)]  # an all-default optional tail stays off the wire
    values = [msg.TYPE]
    for f in kept:
        values.append(_to_wire(getattr(msg, f.name)))
    return _packer.pack(values)  # type: ignore[no-any-return]


def decode(payload: bytes) -> Message:
    """Parse one frame payload into a message; anything off-schema raises ProtocolError."""
    try:
        raw = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, OverflowError) as exc:
        raise ProtocolError(f"undecodable payload: {type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ProtocolError("undecodable payload: invalid UTF-8 in a string") from None
    if type(raw) is not list or not raw:
        raise ProtocolError("message must be a non-empty array")
    tid = raw[0]
    if (tid == 6 and len(raw) == 3 and type(tid) is int and type(raw[1]) is int
            and 0 <= raw[1] <= _U64_MAX and type(raw[2]) is bytes):
        return Chunk(raw[1], raw[2])  # hot path, same checks as the general one
    if type(tid) is not int:
        raise ProtocolError("message type id must be an integer")
    entry = _SCHEMA.get(tid)
    if entry is None:
        raise ProtocolError(f"unknown message type {tid}")
    cls, validators = entry
    tail = _TAILS.get(tid, ())
    n, full = len(raw) - 1, len(validators)
    if tail and n == full - len(tail):
        validators = validators[:n]  # the optional tail left off: its defaults apply
    elif n != full:
        shorter = f" (or {full - len(tail)})" if tail else ""
        raise ProtocolError(f"{cls.__name__} needs {full}{shorter} fields, got {n}")
    try:
        values = [check(v) for check, v in zip(validators, raw[1:], strict=True)]
    except ProtocolError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None
    if tail and n == full and tuple(values[-len(tail):]) == tail:
        raise ProtocolError(f"{cls.__name__}: an all-default optional tail must be left off")
    return cls(*values)  # type: ignore[no-any-return]

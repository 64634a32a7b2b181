"""The one exception tree of cocoon.

Every failure a user, a peer, a contract or an operator can cause is a subclass of
:class:`CocoonError`, defined here (except :class:`ContractRejected` and its
exit-code classes, which live next to the contracts' table in ``cocoon.chain.errors``).
One name per failure; a subclass only refines *where* it was detected::

    CocoonError
    ├── ConfigError              a config key, file or flag is missing or invalid
    │   └── ToolchainMissing     the embedded chain's Node.js toolchain is not installed
    ├── LaunchError              `cocoon up`: a role failed to start or died
    ├── ProtocolError            a peer broke the wire protocol
    │   ├── FrameTooLarge
    │   └── FlowControlError
    ├── TransportError           a connection could not be made or was lost
    ├── AttestationError         evidence malformed, not verifying, or refused (``rule``)
    │   ├── QuoteFormatError
    │   ├── EvidenceInvalid
    │   ├── PolicyRejected
    │   └── ReceiptInvalid       a receipt's signatures, evidence or hashes do not hold
    ├── ChainError               the chain backend failed
    │   ├── ChainUnavailable     it cannot start or cannot be reached (an outage to ride
    │   │                        out, unlike a missing toolchain)
    │   └── ChainTimeout         a call or a transaction ran past its deadline
    ├── PaymentError             money: pricing, vouchers, the ledger, contracts
    │   ├── PricingError         prices or token counts out of range
    │   ├── ReservationError
    │   ├── LedgerError
    │   ├── VoucherInvalid       one opaque error for any bad signature
    │   ├── VoucherReplay        not strictly newer than the last accepted
    │   │   └── VoucherRegression
    │   ├── InsufficientFunds    the balance cannot cover a reservation (402)
    │   └── ContractRejected     a contract refused (``exit_code``, ``meaning``): defined
    │                            with the contracts' exit-code table in cocoon.chain.errors;
    │                            a code that is a failure named above is also that class
    │                            (102 is a VoucherReplay, 101 a VoucherInvalid, ...)
    └── RequestError             ends one request: HTTP ``status``, OpenAI ``type``, ``code``
        ├── BadRequest (400) ── EngineUnsupported, ContextLengthExceeded, RequestTooLarge (413)
        ├── PaymentRequired (402; also a PaymentError): the request can't be paid for
        ├── ModelNotFound (404)
        ├── QueueFull (429): every slot busy and the proxy's wait queue full
        ├── RequestCancelled (499)
        ├── EngineError (500)
        ├── WorkerLost (502), UpstreamError (502)
        ├── SealBroken (502): a sealed request or response did not open, or its stream
        │                     was cut, reordered, replayed or altered on the way
        ├── UntrustedWorker (502): the worker a proxy chose fails the client's own policy
        ├── NoWorkerAvailable (503)
        └── RequestTimeout (504)

A request's failure crosses hops as its ``code`` (``wire.messages.Error``); there is one
mapping each way: ``cocoon.nodes.common.as_request_error`` turns whatever stopped a request
(an exception, a cancellation) into the :class:`RequestError` the requester is told, and
:func:`request_error_from_code` rebuilds the typed error from a code, so a worker's error
reaches the app with the same status, type and code whatever hop it crossed. (The first lives
with the nodes because it knows asyncio's cancellation; this module imports nothing.)
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "BadRequest",
    "ChainError",
    "ChainTimeout",
    "ChainUnavailable",
    "CocoonError",
    "ConfigError",
    "ContextLengthExceeded",
    "EngineError",
    "EngineUnsupported",
    "EvidenceInvalid",
    "FlowControlError",
    "FrameTooLarge",
    "InsufficientFunds",
    "LaunchError",
    "LedgerError",
    "ModelNotFound",
    "NoWorkerAvailable",
    "PaymentError",
    "PaymentRequired",
    "PolicyRejected",
    "PricingError",
    "ProtocolError",
    "QueueFull",
    "QuoteFormatError",
    "ReceiptInvalid",
    "RequestCancelled",
    "RequestError",
    "RequestTimeout",
    "RequestTooLarge",
    "ReservationError",
    "SealBroken",
    "ToolchainMissing",
    "TransportError",
    "UntrustedWorker",
    "UpstreamError",
    "VoucherInvalid",
    "VoucherRegression",
    "VoucherReplay",
    "WorkerLost",
    "request_error_from_code",
]


class CocoonError(Exception):
    """Root of every error cocoon raises on purpose."""


class ConfigError(CocoonError):
    """A configuration value is missing or invalid; the message names the key and source."""


class ToolchainMissing(ConfigError):
    """The embedded chain's toolchain is not installed (Node.js, or the contracts' npm
    packages); the message says how to install it."""


class LaunchError(CocoonError):
    """``cocoon up``: a flag is invalid, or a role failed to start or died."""


# --- wire and connections ----------------------------------------------------------------


class ProtocolError(CocoonError):
    """A peer sent bytes that break the wire protocol (bad frame, schema, state or version)."""


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the negotiated limit."""


class FlowControlError(ProtocolError):
    """A peer sent more stream data than it had credit for, or we tried to."""


class TransportError(CocoonError):
    """A connection could not be made or was lost."""


# --- attestation -------------------------------------------------------------------------


class AttestationError(CocoonError):
    """Evidence is malformed, does not verify, or is refused by policy.

    ``rule`` names the check that failed (e.g. ``quote_signature``, ``pck_chain``,
    ``image_allowed``), so logs say precisely why; the message shown to a remote peer can stay
    generic."""

    rule: str = "attestation"

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        if rule is not None:
            self.rule = rule


class QuoteFormatError(AttestationError):
    """The quote's bytes do not follow the TDX quote layout."""

    rule = "quote_format"


class EvidenceInvalid(AttestationError):
    """A cryptographic or binding check on the evidence failed."""

    rule = "evidence"


class PolicyRejected(AttestationError):
    """The evidence verified but the policy does not accept it."""

    rule = "policy"


class ReceiptInvalid(AttestationError):
    """A receipt does not hold: a signature, the evidence of who signed it, or a hash it
    names fails (``rule`` says which)."""

    rule = "receipt"


# --- chain -------------------------------------------------------------------------------


class ChainError(CocoonError):
    """The chain backend failed (process died, protocol error, bad command)."""


class ChainUnavailable(ChainError):
    """The chain backend cannot start or cannot be reached (missing Node.js or contracts
    toolchain, chain service down). A running node treats it as an outage to ride out."""


class ChainTimeout(ChainError):
    """A chain call, or the wait for a message's transaction, ran past its deadline."""


# --- money -------------------------------------------------------------------------------


class PaymentError(CocoonError):
    """Root of every payment failure (pricing, vouchers, the proxy's ledger, contracts).
    ``status`` is the HTTP status when it ends a request."""

    status: int = 500


class PricingError(PaymentError, ValueError):
    """Prices or token counts are out of range (negative, fee above price, cached > prompt,
    reasoning > completion): a value error, so parsers that promise ``ValueError`` keep it."""


class ReservationError(PaymentError):
    """A reservation operation does not fit the reservation's state (unknown id, already
    released, reused id with other parameters)."""


class LedgerError(PaymentError):
    """The ledger file cannot be used (schema from a newer version, failed integrity)."""


class VoucherInvalid(PaymentError):
    """The voucher's signature does not verify under the expected key.

    One error whatever the cause (forged, wrong key, tampered field, wrong signer): what a
    remote peer learns stays opaque; the message says precisely why for logs."""

    status = 400


class VoucherReplay(PaymentError):
    """The voucher is not strictly newer than the last accepted one on its channel."""

    status = 409


class VoucherRegression(VoucherReplay):
    """The voucher is numbered higher but a cumulative amount went down."""


class InsufficientFunds(PaymentError):
    """The client's available balance cannot cover the reservation (the request that needed
    it is answered :class:`PaymentRequired`)."""

    status = 402

    def __init__(self, message: str, *, available: int = 0, requested: int = 0) -> None:
        super().__init__(message)
        self.available = available
        self.requested = requested


# --- request failures (what an app is answered) ------------------------------------------


class RequestError(CocoonError):
    """A request failed; maps to an OpenAI-shaped HTTP error at the client's edge."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_openai(self) -> dict[str, object]:
        """The body OpenAI's API returns for an error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(RequestError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class EngineUnsupported(BadRequest):
    """A valid OpenAI field that this worker's engine cannot honour."""

    code = "unsupported_by_engine"


class ContextLengthExceeded(BadRequest):
    """The prompt, or the prompt and the ``max_tokens`` asked for, do not fit the model's
    context window (OpenAI's code for it)."""

    code = "context_length_exceeded"


class RequestTooLarge(BadRequest):
    """The request body is larger than the network can carry in one frame (413)."""

    status = 413
    code = "request_too_large"


class PaymentRequired(RequestError, PaymentError):
    """The request cannot be paid for: the client's balance is too low, its channel is
    closing, or it left too much unsigned. The message says which and how to fix it."""

    status = 402
    type = "insufficient_funds"
    code = "insufficient_funds"


class ModelNotFound(RequestError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NoWorkerAvailable(RequestError):
    status = 503
    type = "server_error"
    code = "no_worker_available"


class QueueFull(RequestError):
    """Every worker slot for the model is busy and its wait queue at the proxy is full
    (``proxy.queue_limit``): OpenAI's rate-limit answer, with Retry-After."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class WorkerLost(RequestError):
    """The worker serving a request disconnected or died before finishing it."""

    status = 502
    type = "server_error"
    code = "worker_lost"


class UpstreamError(RequestError):
    """The engine's upstream server answered with an error or garbage."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class SealBroken(RequestError):
    """A sealed request did not open at the worker, or a sealed response did not open at
    the client: a record altered, dropped, reordered, replayed, or the stream cut before the
    worker's final word. Nothing of the broken record reaches the app."""

    status = 502
    type = "server_error"
    code = "seal_broken"


class UntrustedWorker(RequestError):
    """The worker the proxy chose fails the client's own attestation policy (its evidence,
    tier, image or model allow-lists), so the client sends it nothing."""

    status = 502
    type = "server_error"
    code = "worker_untrusted"


class RequestTimeout(RequestError):
    status = 504
    type = "server_error"
    code = "timeout"


class RequestCancelled(RequestError):
    """The requester went away; nobody is waiting for this error."""

    status = 499
    type = "cancelled"
    code = "cancelled"


class EngineError(RequestError):
    """The engine failed while generating."""

    status = 500
    type = "server_error"
    code = "engine_error"


_BY_CODE: dict[str, type[RequestError]] = {
    cls.code: cls
    for cls in (
        RequestError,
        BadRequest,
        EngineUnsupported,
        ContextLengthExceeded,
        RequestTooLarge,
        ModelNotFound,
        PaymentRequired,
        NoWorkerAvailable,
        QueueFull,
        WorkerLost,
        UpstreamError,
        SealBroken,
        UntrustedWorker,
        RequestTimeout,
        RequestCancelled,
        EngineError,
    )
}


def request_error_from_code(code: str, message: str, param: str | None = None) -> RequestError:
    """Rebuild the typed error a peer reported; unknown codes become a plain RequestError."""
    cls = _BY_CODE.get(code, RequestError)
    return cls(message, param=param)

"""The one exception tree of cocoon.

Every failure a user or a peer can cause is a subclass of :class:`CocoonError`.
Errors that end a request (:class:`RequestError` and below) carry what the edge needs:
an HTTP status, an OpenAI error ``type`` and a stable ``code``.  The ``code`` is what
travels on the wire (``wire.messages.Error``), so a worker's error reaches the app as the
same type, whatever hop it crossed: :func:`request_error_from_code` maps it back.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "BadRequest",
    "CocoonError",
    "ConfigError",
    "EngineError",
    "EngineUnsupported",
    "EvidenceInvalid",
    "FlowControlError",
    "FrameTooLarge",
    "ModelNotFound",
    "NoWorkerAvailable",
    "PaymentError",
    "PaymentRequired",
    "PolicyRejected",
    "ProtocolError",
    "QuoteFormatError",
    "RequestCancelled",
    "RequestError",
    "RequestTimeout",
    "TransportError",
    "UpstreamError",
    "WorkerLost",
    "request_error_from_code",
]


class CocoonError(Exception):
    """Root of every error cocoon raises on purpose."""


class ConfigError(CocoonError):
    """A configuration value is missing or invalid; the message names the key and source."""


class ProtocolError(CocoonError):
    """A peer sent bytes that break the wire protocol (bad frame, schema, state or version)."""


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the negotiated limit."""


class FlowControlError(ProtocolError):
    """A peer sent more stream data than it had credit for, or we tried to."""


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


class PaymentError(CocoonError):
    """Root of every payment failure (pricing, vouchers, the proxy's ledger); subclasses live
    in ``cocoon.ledger.errors``. ``status`` is the HTTP status when it ends a request."""

    status: int = 500


class TransportError(CocoonError):
    """A connection could not be made or was lost."""


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


class PaymentRequired(RequestError):
    """The client's balance cannot cover the request's reservation."""

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
        ModelNotFound,
        PaymentRequired,
        NoWorkerAvailable,
        WorkerLost,
        UpstreamError,
        RequestTimeout,
        RequestCancelled,
        EngineError,
    )
}


def request_error_from_code(code: str, message: str, param: str | None = None) -> RequestError:
    """Rebuild the typed error a peer reported; unknown codes become a plain RequestError."""
    cls = _BY_CODE.get(code, RequestError)
    return cls(message, param=param)

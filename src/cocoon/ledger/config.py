"""The ``[billing]`` table: the proxy's prices and where its ledger lives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cocoon.errors import ConfigError
from cocoon.money import MONEY
from cocoon.validation import require_positive

__all__ = ["BillingConfig"]


@dataclass(frozen=True, slots=True)
class BillingConfig:
    """The proxy's prices and ledger (section ``[billing]``). Amounts are nanoTON integers
    here and TON with decimals in a config file (the fields marked ``MONEY``)."""

    enabled: bool = False
    ledger_path: str = ".cocoon/proxy-ledger.sqlite"
    signing_key_file: str = ".cocoon/proxy-voucher.key"  # Ed25519, 0600, created if missing
    # Amounts of money: nanoTON here, TON with decimals in a config file ("0.000000002").
    price_per_token: int = field(default=2, metadata=MONEY)  # clients pay per adjusted token
    worker_fee_per_token: int = field(default=1, metadata=MONEY)  # workers earn per token
    prompt_mult: int = 10000  # 10000 = 1.0x
    cached_mult: int = 10000
    completion_mult: int = 10000
    reasoning_mult: int = 10000
    # fine-tuning jobs: every trained token (each example's tokens, each epoch), at this
    # multiplier (a training step costs about three forward passes)
    training_mult: int = 30000
    worker_coefficient: int = 1000  # what a worker that declares none asks; 1000 = 1.0x
    # the most a worker may ask: one announcing more is not routed to (a worker sets its own
    # price; this keeps a client without a cap of its own from paying any price)
    max_worker_coefficient: int = 4000
    default_max_tokens: int = 1000  # the cap reserved (and enforced) when a request has none
    commit_interval_s: float = 60.0  # how often the proxy commits its totals (a state commit)
    # chain: charges a client may owe unsigned (1 TON)
    max_unsigned: int = field(default=1_000_000_000, metadata=MONEY)
    max_unsigned_fraction: float = 0.1  # chain: ... and at most this share of its deposit
    # chain: a client's signature is redeemed once it adds this much (a redemption costs about
    # 6 mTON of gas), and whatever it adds once the client asks to close its channel
    redeem_threshold: int = field(default=50_000_000, metadata=MONEY)  # 0.05 TON
    channel_recheck_s: float = 1.0  # chain: re-read a client's channel before its request
    # after a restart, how long reservations a killed proxy left open wait for their workers'
    # job reports (what was generated: charged) before they are released (charged nothing)
    report_grace_s: float = 60.0
    # statements go out at most this often per client/worker (the newest one): each costs the
    # client a signature and the worker a file write; unsigned charges stay within max_unsigned
    statement_interval_s: float = 0.25

    def __post_init__(self) -> None:
        if self.worker_fee_per_token > self.price_per_token:
            raise ConfigError("billing.worker_fee_per_token must not exceed price_per_token")
        require_positive(self.default_max_tokens, "billing.default_max_tokens")
        if not 1 <= self.worker_coefficient <= self.max_worker_coefficient:
            raise ConfigError("billing.worker_coefficient must be from 1 to "
                              f"billing.max_worker_coefficient ({self.max_worker_coefficient})")
        require_positive(self.commit_interval_s, "billing.commit_interval_s")
        if self.redeem_threshold < 0:
            raise ConfigError("billing.redeem_threshold must be >= 0 (nanoTON), got "
                              f"{self.redeem_threshold}")
        if not math.isfinite(self.channel_recheck_s) or self.channel_recheck_s < 0:
            raise ConfigError("billing.channel_recheck_s must be >= 0 (seconds; 0: only at "
                              f"each commit tick), got {self.channel_recheck_s}")
        require_positive(self.statement_interval_s, "billing.statement_interval_s")
        if not math.isfinite(self.report_grace_s) or self.report_grace_s < 0:
            raise ConfigError("billing.report_grace_s must be >= 0 (seconds), got "
                              f"{self.report_grace_s}")
        if not 0.0 <= self.max_unsigned_fraction <= 1.0:
            raise ConfigError("billing.max_unsigned_fraction must be between 0 and 1 (a share "
                              f"of the client's deposit), got {self.max_unsigned_fraction}")

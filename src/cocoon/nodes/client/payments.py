"""The client's signature over what it has been charged: on-chain charge vouchers.

The client's channel contract pays the proxy only against a voucher signed by the client's
own key (``chain.key_file``). After each proxy statement that checks out (signed by the
proxy, strictly newer, figures matching), the client signs the statement's cumulative
charge for its channel and sends it back; nothing else is ever signed. Seqnos are
``max(last + 1, unix milliseconds)``, so they keep increasing across restarts even if the
small state file (the last voucher signed) is lost. A client paying through one channel keeps
that file beside its key (``KEY.signed.json``); one paying several proxies keeps one per
channel (``KEY.signed-<channel>.json``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from cocoon.chain.vouchers import ChainVoucher, sign_voucher
from cocoon.crypto import load_or_create_ed25519_key
from cocoon.errors import PaymentError

__all__ = ["ChargeSigner"]

log = logging.getLogger(__name__)


class ChargeSigner:
    def __init__(self, key_file: str, channel: str, *, shared_state: bool = True) -> None:
        self._key = load_or_create_ed25519_key(key_file)
        self.channel = channel
        self._state = Path(key_file + ".signed.json" if shared_state else
                           f"{key_file}.signed-{channel.replace(':', '_')}.json")
        self.seqno = 0
        self.cumulative = 0
        try:
            data = json.loads(self._state.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("channel") == channel:
                seqno, cumulative = data["seqno"], data["cumulative"]
                if (type(seqno) is not int or type(cumulative) is not int
                        or not 0 <= seqno < 1 << 64 or not 0 <= cumulative < 1 << 120):
                    raise ValueError("seqno/cumulative out of range")
                self.seqno, self.cumulative = seqno, cumulative
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", self._state, exc)

    def sign(self, cumulative: int) -> ChainVoucher:
        """Sign ``cumulative`` nanoTON (never less than already signed) with a fresh seqno."""
        if cumulative < self.cumulative:
            raise PaymentError(f"refusing to sign {cumulative} nanoTON: already signed "
                               f"{self.cumulative} on {self.channel}")
        seqno = max(self.seqno + 1, time.time_ns() // 1_000_000)
        voucher = sign_voucher(self._key, "client", self.channel, seqno, cumulative)
        self.seqno, self.cumulative = seqno, cumulative
        self._save()
        return voucher

    def _save(self) -> None:
        tmp = self._state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"channel": self.channel, "seqno": self.seqno,
                                   "cumulative": self.cumulative}))
        os.replace(tmp, self._state)

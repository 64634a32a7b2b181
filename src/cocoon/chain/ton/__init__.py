"""``ton`` chain backend: the Cocoon contracts on TON testnet or mainnet, through liteservers.

:class:`TonChain` implements :class:`cocoon.chain.base.Chain` with pytoniq 0.1.43.  Every
operation builds its message body (and, for deploys, its StateInit) with
:mod:`cocoon.chain.messages` -- the very cells the embedded chain executes -- and hands one
:class:`OutgoingMessage` to a :class:`MessageSender`; get-methods go through a
:class:`GetMethodReader`.  The real sender (:class:`LiteSender`) signs an external message
for the node's wallet, sends it through a ``LiteBalancer`` and waits, bounded, for the
destination's transaction; a rejection raises the same
:class:`cocoon.chain.errors.ContractRejected` subclass the embedded chain raises.

Pointing cocoon at testnet
--------------------------

1. A wallet.  The backend sends from one **WalletV4R2** wallet (workchain 0, the standard
   subwallet id 698983191): the "v4R2" wallet Tonkeeper and Tonhub show for the same 24
   words.  Put the 24 mnemonic words (separated by spaces or newlines) in a file readable
   only by you::

       install -m 600 /dev/null ~/.config/cocoon/wallet.mnemonic
       $EDITOR ~/.config/cocoon/wallet.mnemonic        # 24 words
       chmod 600 ~/.config/cocoon/wallet.mnemonic      # refused when group/others can read it

   Fund the wallet's address (``TonWallet.from_file(path).address``; a wallet app shows
   the same v4R2 address for these words; testnet coins come from the testnet faucet bot).
   It need not be deployed: the first message it sends carries the wallet's StateInit.
2. Liteservers.  ``network_config`` is the path of a TON global config JSON (the
   ``liteservers`` + ``validator.init_block`` file published for each network), or
   ``"testnet"`` / ``"mainnet"`` (also ``""`` = testnet): the config is then downloaded at
   start-up from the URL pytoniq uses (:data:`NETWORK_CONFIG_URLS`; pytoniq ships no config
   file).  Without internet access to that URL, download the file once and give its path.
3. The node's ``[chain]`` section::

       [chain]
       backend = "ton"
       mnemonic_file = "/home/me/.config/cocoon/wallet.mnemonic"
       network_config = "testnet"        # or a path to testnet-global.config.json

Trust: liteserver answers are checked with pytoniq's ``trust_level`` (default 2: answers
are trusted, no proofs -- fast start-up; 0 or 1 verify block and shard proofs).
Time: a real chain's clock cannot be moved; :meth:`TonChain.advance_time` raises
:class:`ChainError` (a close delay must really elapse).

Waiting: after sending, :class:`LiteSender` polls the wallet for the transaction of its
external message, then the destination for the transaction of the wallet's internal message
(``timeout`` seconds in all, 120 by default).  A :class:`ChainTimeout` does not mean the
message was dropped: it may still be applied; look at the destination before resending.
Messages from one :class:`LiteSender` are sent one at a time (the wallet's seqno orders
them).  The returned :class:`TxResult` holds the wallet's and the destination's
transactions, not the rest of the trace (e.g. a voucher's payout to the payee).

Modules, by concern: :mod:`~cocoon.chain.ton.wallet` (mnemonic file, WalletV4R2, signed
external messages), :mod:`~cocoon.chain.ton.lite` (network config, liteserver reads and
get-methods), :mod:`~cocoon.chain.ton.sender` (send and wait), :mod:`~cocoon.chain.ton.stack`
(TVM stack <-> JSON), :mod:`~cocoon.chain.ton.backend` (:class:`TonChain`).
"""

from cocoon.chain.errors import ChainTimeout
from cocoon.chain.ton.backend import TonChain
from cocoon.chain.ton.lite import (
    NETWORK_CONFIG_URLS,
    AccountSnapshot,
    GetMethodReader,
    LiteApi,
    LiteReader,
    PytoniqLite,
    SeenTx,
    load_network_config,
)
from cocoon.chain.ton.sender import DEFAULT_TIMEOUT, LiteSender, MessageSender
from cocoon.chain.ton.wallet import SEND_MODE, WALLET_ID, OutgoingMessage, TonWallet, load_mnemonic

__all__ = [
    "DEFAULT_TIMEOUT",
    "NETWORK_CONFIG_URLS",
    "SEND_MODE",
    "WALLET_ID",
    "AccountSnapshot",
    "ChainTimeout",
    "GetMethodReader",
    "LiteApi",
    "LiteReader",
    "LiteSender",
    "MessageSender",
    "OutgoingMessage",
    "PytoniqLite",
    "SeenTx",
    "TonChain",
    "TonWallet",
    "load_mnemonic",
    "load_network_config",
]

"""Command-line faces: each ``cocoon`` subcommand's arguments and what it runs.

* :mod:`~cocoon.commands.roles`: ``cocoon proxy|worker|client [ACTION]`` arguments (one
  parser per action), and the inspecting actions (``proxy ledger``, ``client balance``,
  ``worker earnings``);
* :mod:`~cocoon.commands.serve`: ``cocoon proxy|worker|client run``, a role's node;
* :mod:`~cocoon.commands.chain`: ``cocoon chain`` arguments and the roles' on-chain actions
  (open, topup, close, withdraw, stake, unstake);
* :mod:`~cocoon.commands.chain_service`: ``cocoon chain run``, the embedded chain over HTTP;
* :mod:`~cocoon.commands.registry`: ``cocoon registry``, the root registry's owner tool;
* :mod:`~cocoon.commands.up`: ``cocoon up``, a whole local network as processes
  (:class:`~cocoon.commands.up.LocalNetwork`, also what the e2e tests and the bench start);
* :mod:`~cocoon.commands.attest`: ``cocoon attest``.

Money and dates as people type and read them (TON with decimals, ISO-8601 UTC) are
:mod:`cocoon.money`'s, shared by every command and by the messages the nodes give people.

Faces sit above the nodes and the domain packages and may import them; nothing below imports
a face. :mod:`cocoon.cli` assembles these (and :mod:`cocoon.benchmark`, a face above them).
"""

__all__: list[str] = []

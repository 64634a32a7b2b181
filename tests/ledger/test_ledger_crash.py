"""Crash test: kill -9 a proxy process at 50 random points of a request stream.

After every kill the ledger is reopened: its invariants hold, every settle the child
acknowledged is there (nothing lost), every settled request was charged exactly its planned
bill once (nothing charged twice), and the clients' and workers' own voucher copies are equal
to the proxy's last voucher or one step behind it (never ahead, never conflicting).  A final
clean run resolves what is open and brings every side to equality.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import ledger_crash_child as child

from cocoon.ledger import Ledger, VoucherOrder, compare, verify

KILLS = 50
CHILD = Path(child.__file__).resolve()


def start(directory: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str], deadline_s: float = 20.0) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"child not ready (rc={proc.poll()}): {err}")


def check(directory: Path) -> dict[str, VoucherOrder]:
    """Ledger invariants, acknowledged settles, exact charges, and the sides' copies."""
    with Ledger(directory / "ledger.sqlite") as ledger:
        assert ledger.check_invariants(child.PUB) == []
        rows = ledger._conn.execute(
            "SELECT request_id, client, worker, state, client_cost, worker_income FROM reservations"
        ).fetchall()
        charged: dict[str, int] = {}
        earned: dict[str, int] = {}
        for rid, client, worker, state, cost, income in rows:
            p = child.plan(int(rid.split("-")[1]))
            assert (client, worker) == (p.client, p.worker)
            if state == "settled":
                assert p.outcome != "failed"
                assert (cost, income) == (p.bill.client_cost, p.bill.worker_income), rid
                charged[client] = charged.get(client, 0) + cost
                earned[worker] = earned.get(worker, 0) + income
            elif state == "released":
                assert p.outcome == "failed"
        # exactly once: the accounts are the sum of each settled request's planned bill
        for client in child.CLIENTS:
            assert ledger.balance(client).charged == charged.get(client, 0)
        for worker in child.WORKERS:
            assert ledger.earnings(worker).earned == earned.get(worker, 0)
        # nothing acknowledged was lost
        states = {rid: (state, cost) for rid, _, _, state, cost, _ in rows}
        # the text after the last newline (if any) is a torn write, not an acknowledgement
        acks = (directory / "acks").read_text().split("\n")[:-1]
        for line in acks:
            rid, cost = line.split()
            assert states.get(rid) == ("settled", int(cost)), rid
        orders: dict[str, VoucherOrder] = {}
        for kind, channels in child.CHANNELS:
            for channel in channels:
                proxy = ledger.last_voucher(kind, channel)
                side = child.load_side(directory, kind, channel)
                if proxy is not None:
                    v = verify(proxy, child.PUB)
                    total = (
                        ledger.balance(channel).charged
                        if kind == "client_charge"
                        else ledger.earnings(channel).earned
                    )
                    assert v.cumulative_nanoton == total
                order = compare(
                    None if side is None else verify(side, child.PUB),
                    None if proxy is None else proxy.voucher,
                )
                assert order in (VoucherOrder.EQUAL, VoucherOrder.REMOTE_NEWER), (channel, order)
                if order is VoucherOrder.REMOTE_NEWER and side is not None and proxy is not None:
                    assert proxy.voucher.seqno == side.voucher.seqno + 1  # one step behind
                orders[f"{kind}:{channel}"] = order
        return orders


def test_kill_9_at_random_points(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("LEDGER_CRASH_SEED", "20261125")))
    started = time.monotonic()
    for _ in range(KILLS):
        proc = start(tmp_path)
        if rng.random() < 0.2:  # anywhere, start-up and recovery included
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # mid-stream
            wait_ready(proc)
            time.sleep(rng.uniform(0.0, 0.25))
        assert proc.poll() is None, proc.communicate()[1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        check(tmp_path)
    drain = start(tmp_path, "--drain")
    _, err = drain.communicate(timeout=30)
    assert drain.returncode == 0, err
    orders = check(tmp_path)
    assert set(orders.values()) == {VoucherOrder.EQUAL}
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        totals = ledger.totals()
        assert ledger.open_reservations() == []
    assert totals.settled_requests > KILLS  # the stream really ran between kills
    assert time.monotonic() - started < 60

"""Every flag, argument and subcommand of ``cocoon`` says what it does, and the role actions'
arguments are named for what they are."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from cocoon.cli import _build_parser, main


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    """Every action of ``parser`` and of its subcommands, depth first, with its command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions}
            for name, sub in action.choices.items():
                if name not in helped:  # a subcommand listed without a line of help
                    yield f"{path} {name}", argparse.Action([], name, help=None)
                yield from _walk(sub, f"{path} {name}")
            continue
        yield path, action


def test_every_action_of_every_subcommand_has_help() -> None:
    walked = list(_walk(_build_parser(), "cocoon"))
    missing = [f"{path}: {'/'.join(a.option_strings) or a.dest}" for path, a in walked
               if not (a.help or "").strip() or a.help == argparse.SUPPRESS]
    assert missing == []
    commands = {path for path, _ in walked}
    # the walk reached the leaves it must check
    assert {"cocoon worker", "cocoon worker run", "cocoon proxy stake", "cocoon client open",
            "cocoon registry set-params", "cocoon attest verify-quote", "cocoon up",
            "cocoon bench"} <= commands
    flags = {(path, s) for path, a in walked for s in a.option_strings}
    assert {("cocoon worker", "--engine"), ("cocoon worker", "--max-concurrent"),
            ("cocoon worker run", "--engine"), ("cocoon proxy", "--verbose")} <= flags


def _parse(*argv: str) -> argparse.Namespace:
    return _build_parser().parse_args(list(argv))


def test_role_actions_name_their_arguments() -> None:
    stake = _parse("proxy", "stake", "2.5", "-c", "proxy.toml")
    assert (stake.action, stake.amount, stake.config) == ("stake", "2.5", "proxy.toml")
    assert not hasattr(stake, "worker_wallet")
    opened = _parse("proxy", "open-channel", "0:ab", "0.2", "--close-delay", "60")
    assert (opened.worker_wallet, opened.amount, opened.close_delay) == ("0:ab", "0.2", 60)
    topup = _parse("client", "-c", "client.toml", "topup", "1", "--json")
    assert (topup.action, topup.amount, topup.config, topup.json) == (
        "topup", "1", "client.toml", True)
    # no action: the node runs, with the role's flags before or after `run`
    assert _parse("worker", "--engine", "fake").action == "run"
    run = _parse("worker", "run", "--engine", "fake", "--max-concurrent", "2")
    assert (run.engine, run.max_concurrent, run.verbose) == ("fake", 2, 1)


def test_proxy_stake_help_names_the_amount(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["proxy", "stake", "--help"])
    out = capsys.readouterr().out
    assert "amount" in out and "in TON" in out and "worker_wallet" not in out
    with pytest.raises(SystemExit) as ei:
        main(["proxy", "stake"])
    assert ei.value.code == 2
    assert "required: amount" in capsys.readouterr().err


def test_amounts_are_checked_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad amount is a clear error from the CLI (exit 2), before any config or chain."""
    assert main(["client", "topup", "1.0000000001"]) == 2
    assert "at most 9 decimals" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main(["up", "--demo-funds", "ten"])
    assert ei.value.code == 2
    assert "--demo-funds" in capsys.readouterr().err

"""Issue 14, items 1, 2 and 4: the client checks the worker itself, seals the request to it,
opens the answer and checks the receipt. A real ClientNode, ProxyNode and WorkerNode (fake
engine) over loopback, the official openai SDK as the app; a proxy that tampers is the real
one with its sends to the client rewritten."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import h11
import httpx
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from loopback import T, ask, running, running_proxy, until

from cocoon.attestation.config import AttestationConfig
from cocoon.attestation.providers import NoneProvider
from cocoon.attestation.receipt import HEADER, Receipt, WorkerPart, sign_part, verify
from cocoon.cli import main
from cocoon.config import ClientConfig, WorkerConfig
from cocoon.crypto.seal import new_seal_key, seal_public_bytes
from cocoon.engines import FakeEngine, FakeEngineConfig
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.client.sealing import ReceiptBook
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.nodes.worker.node import WorkerNode
from cocoon.transport import TcpConnector
from cocoon.transport.tls_identity import TlsIdentity
from cocoon.wire import Chunk, End, Message, Roster, Route

MESSAGES: Any = [{"role": "user", "content": "hello sealed world"}]


def worker_for(port: int) -> WorkerNode:
    return WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                   node_id="w1"),
                      FakeEngine(FakeEngineConfig(chunks=6, chunk_bytes=4)),
                      connector=TcpConnector())


def client_for(port: int, **config: Any) -> ClientNode:
    return ClientNode(ClientConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0", **config),
                      connector=TcpConnector())


def sdk(client: ClientNode) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=client.http.url + "/v1", api_key="unused",
                              max_retries=0, timeout=T)


async def streamed(client: ClientNode) -> str:
    return await ask(client.http.url, stream=True)


def tamper(proxy: ProxyNode, change: Callable[[Message], Message | None]) -> None:
    """Rewrite (or drop: None) what the proxy sends its connected client."""
    for peer in proxy.clients:
        send = peer.send

        def patched(msg: Message, send: Any = send) -> None:
            out = change(msg)
            if out is not None:
                send(out)
        peer.send = patched  # type: ignore[method-assign]


class Setup:
    def __init__(self, proxy: ProxyNode, worker: WorkerNode, client: ClientNode) -> None:
        self.proxy, self.worker, self.client = proxy, worker, client


async def network_run(test: Callable[[Setup], Any], **client_config: Any) -> None:
    async with running_proxy() as net:
        port = net.proxy.port
        async with running(worker_for(port)) as worker, \
                running(client_for(port, **client_config)) as client:
            await until(lambda: any(link.offers("fake") for link in client.links))
            await test(Setup(net.proxy, worker, client))


async def test_sealed_answers_reach_the_sdk_with_checked_receipts() -> None:
    async def check(s: Setup) -> None:
        text = await streamed(s.client)
        assert text
        async with sdk(s.client) as app:
            raw = await app.chat.completions.with_raw_response.create(model="fake",
                                                                      messages=MESSAGES)
            unary = raw.parse()
            assert unary.choices[0].message.content == text
            header = raw.headers[HEADER]
            receipt_id = raw.headers["x-cocoon-receipt-id"]
        assert s.worker.stats.sealed == 2 and s.client.stats.receipts == 2
        assert s.client.stats.seal_failures == 0
        compact = Receipt.decode(header)
        assert not compact.worker_certificate  # the header names certificates by hash
        assert compact.worker.sealed and compact.proxy is not None
        assert compact.worker.completion_tokens == unary.usage.completion_tokens  # type: ignore[union-attr]
        # the whole one, with both certificates, verifies on its own
        async with httpx.AsyncClient() as http:
            got = await http.get(f"{s.client.http.url}/v1/receipts/{receipt_id}")
            assert got.status_code == 200
            missing = await http.get(f"{s.client.http.url}/v1/receipts/nope")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"
        whole = Receipt.decode(got.content)
        assert whole.worker == compact.worker and whole.worker_certificate
        checked = verify(whole, lambda der, role, _at: s.client._check(der, role))
        assert checked.worker_tier == "unattested" and checked.proxy_tier == "unattested"

    await network_run(check)


async def raw_stream(url: str) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """POST a streamed request over a bare socket and read the answer with h11 (an HTTP/1.1
    parser nobody here wrote): its headers, body and trailer fields."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "fake", "messages": MESSAGES, "stream": True}).encode()
    conn = h11.Connection(h11.CLIENT)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(conn.send(h11.Request(
        method="POST", target="/v1/chat/completions",
        headers=[("Host", host), ("Content-Type", "application/json"),
                 ("Content-Length", str(len(body)))])) + conn.send(h11.Data(data=body))
        + conn.send(h11.EndOfMessage()))
    headers: dict[str, str] = {}
    data = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(reader.read(65536), T))
            elif isinstance(event, h11.Response):
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return headers, data, {k.decode(): v.decode() for k, v in event.headers}
    finally:
        writer.close()


async def test_a_stream_carries_its_receipt_in_a_trailer_and_a_comment_the_sdk_skips(
        ) -> None:
    async def check(s: Setup) -> None:
        async with httpx.AsyncClient(timeout=T) as http:
            r = await http.post(f"{s.client.http.url}/v1/chat/completions",
                                json={"model": "fake", "messages": MESSAGES, "stream": True})
        lines = r.text.split("\n\n")
        assert lines[-2] == "data: [DONE]"
        assert lines[-3].startswith(f": {HEADER} ")
        receipt = Receipt.decode(lines[-3].split(" ", 2)[2])
        assert receipt.worker.sealed
        assert r.headers["x-cocoon-receipt-id"]
        assert r.headers["trailer"] == HEADER
        # read as HTTP: the receipt is a trailer field, the very one of the comment
        headers, body, trailers = await raw_stream(s.client.http.url)
        assert headers["trailer"] == HEADER and headers["transfer-encoding"] == "chunked"
        assert body.endswith(b"data: [DONE]\n\n")
        comment = body.split(b"\n\n")[-3].decode().split(" ", 2)[2]
        assert trailers[HEADER] == comment
        trailed = Receipt.decode(trailers[HEADER])
        assert trailed.worker.sealed and trailed.proxy is not None
        assert trailed.worker.request_sha256 != receipt.worker.request_sha256  # its own
        assert s.client.stats.receipts == 2 and s.client.stats.seal_failures == 0

    await network_run(check)


async def test_sealing_off_goes_in_the_clear_and_still_has_a_receipt() -> None:
    async def check(s: Setup) -> None:
        assert await streamed(s.client)
        assert s.worker.stats.sealed == 0 and s.client.stats.receipts == 1

    await network_run(check, seal="off")


@pytest.mark.parametrize("how", ["flip", "drop", "swap", "strip_receipt"])
async def test_a_proxy_that_alters_the_answer_is_caught(how: str) -> None:
    """Each tampering ends the stream with seal_broken; the app never sees the altered
    record's bytes."""
    async def check(s: Setup) -> None:
        held: list[Chunk] = []

        def change(msg: Message) -> Message | None:
            if type(msg) is Chunk:
                if how == "flip":
                    return Chunk(msg.req_id, msg.data[:-1] + bytes([msg.data[-1] ^ 1]))
                if how == "drop" and not held:
                    held.append(msg)
                    return None
                if how == "swap":
                    if not held:
                        held.append(msg)
                        return None
                    if len(held) == 1:
                        held.append(msg)
                        return held[0]
            if type(msg) is End and how == "strip_receipt":
                return End(msg.req_id, msg.prompt_tokens, msg.completion_tokens,
                           msg.cached_tokens, msg.reasoning_tokens)
            return msg
        tamper(s.proxy, change)
        with pytest.raises(openai.APIError) as caught:
            await streamed(s.client)
        assert "seal" in str(caught.value) or "receipt" in str(caught.value)
        assert s.client.stats.seal_failures == 1

    await network_run(check)


async def test_a_proxy_that_substitutes_the_workers_key_gets_nothing_opened() -> None:
    """The proxy hands the client a certificate of its own making for its worker (another
    seal key): the real worker cannot unwrap what was wrapped to it and refuses,
    seal_broken. (With attestation the forged certificate fails the client's policy
    first; these workers are unattested.)"""
    async def check(s: Setup) -> None:
        forged = TlsIdentity.create(NoneProvider(), "worker", "fake",
                                    seal_key=seal_public_bytes(new_seal_key()))
        der = forged.certificate.public_bytes(serialization.Encoding.DER)

        def change(msg: Message) -> Message | None:
            if type(msg) is Roster:
                return Roster(tuple(replace(w, certificate=der) for w in msg.workers))
            return Route(msg.req_id, msg.worker, der) if type(msg) is Route else msg
        tamper(s.proxy, change)
        s.proxy._catalog_dirty = True  # the client gets the forged roster
        await until(lambda: all(w.certificate == der for w in s.client.roster))
        async with sdk(s.client) as app:
            with pytest.raises(openai.APIStatusError) as caught:
                await app.chat.completions.create(model="fake", messages=MESSAGES)
        assert caught.value.status_code == 502
        assert caught.value.body["code"] == "seal_broken"  # type: ignore[index]
        assert s.worker.stats.sealed == 1 and s.worker.stats.completed == 0

    await network_run(check)


async def test_a_worker_the_clients_policy_refuses_is_sent_nothing() -> None:
    async def check(s: Setup) -> None:
        async with sdk(s.client) as app:
            with pytest.raises(openai.APIStatusError) as caught:
                await app.chat.completions.create(model="fake", messages=MESSAGES)
        assert caught.value.status_code == 502
        body: Any = caught.value.body
        assert body["code"] == "worker_untrusted" and "tier" in body["message"]
        assert s.worker.stats.received == 0  # the request never left the proxy

    # this client accepts only TDX workers; the test's worker is unattested
    await network_run(check, attestation=AttestationConfig(accept="tdx"))


async def test_seal_require_refuses_an_unattested_worker() -> None:
    async def check(s: Setup) -> None:
        with pytest.raises(openai.APIStatusError) as caught:
            await streamed(s.client)
        assert caught.value.status_code == 502
        assert "unattested" in json.dumps(caught.value.body)

    await network_run(check, seal="require")


def test_the_compact_header_is_base64url_json() -> None:
    raw = base64.urlsafe_b64encode(b'{"cocoon_receipt": 2}').decode()
    with pytest.raises(Exception, match="not a cocoon receipt"):
        Receipt.decode(raw)


async def test_kept_receipts_verify_offline_and_any_change_is_caught(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``cocoon receipt verify`` on the client's daily file: both answers hold; a receipt
    whose cost, tokens or certificate was changed afterwards does not, naming the rule."""
    async def check(s: Setup) -> None:
        await streamed(s.client)
        await streamed(s.client)

    await network_run(check, receipt_dir=str(tmp_path / "receipts"))
    [kept] = list((tmp_path / "receipts").glob("receipts-*.jsonl"))
    assert kept.stat().st_mode & 0o777 == 0o600
    lines = kept.read_text().splitlines()
    assert len(lines) == 2
    # compact lines; each certificate kept once beside them
    assert all("worker_certificate" not in json.loads(line) for line in lines)
    assert len(list((kept.parent / "certificates").glob("*.der"))) == 2  # worker, proxy
    assert main(["receipt", "verify", str(kept), "--fake-dir", str(tmp_path)]) == 2
    assert "not a fake TDX authority" in capsys.readouterr().err
    assert main(["receipt", "verify", str(kept), "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["valid"] for r in results] == [True, True]
    assert results[0]["worker"]["node"] == "w1" and results[0]["worker"]["sealed"]
    assert results[0]["tokens"]["completion"] > 0
    first = json.loads(lines[0])
    assert main(["receipt", "verify", str(kept), "--id", first["id"]]) == 0
    assert "valid" in capsys.readouterr().out

    def changed(edit: Callable[[dict[str, Any]], None]) -> tuple[int, str]:
        data = json.loads(lines[0])
        edit(data)
        path = kept.parent / "changed.json"  # beside the certificates the client keeps
        path.write_text(json.dumps(data))
        code = main(["receipt", "verify", str(path), "--json"])
        return code, json.loads(capsys.readouterr().out)["rule"]

    def cost(d: dict[str, Any]) -> None:
        d["proxy"]["cost_nanoton"] += 1

    def tokens(d: dict[str, Any]) -> None:
        d["worker"]["completion_tokens"] += 1

    def certificate(d: dict[str, Any]) -> None:
        d["worker"]["certificate_sha256"] = d["proxy"]["certificate_sha256"]

    def countersigned(d: dict[str, Any]) -> None:
        d["worker_signature"] = json.loads(lines[1])["worker_signature"]

    assert changed(cost) == (1, "proxy_signature")
    assert changed(tokens) == (1, "worker_signature")
    assert changed(certificate) == (1, "role")  # a proxy's certificate is no worker's
    assert changed(countersigned)[0] == 1
    # without the certificates beside it, a compact receipt says what is missing
    alone = tmp_path / "alone.jsonl"
    alone.write_text(lines[0])
    assert main(["receipt", "verify", str(alone)]) == 1
    assert "receipt_format" in capsys.readouterr().out


async def test_a_failover_seals_the_request_anew_for_the_next_worker() -> None:
    """The first worker dies after it got the sealed request, before answering: the proxy
    routes it to another that joined meanwhile, the client wraps its key for that one after
    a Route, and the app sees only the answer."""
    async with running_proxy() as net:
        port = net.proxy.port
        slow = WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                       node_id="w-slow"),
                          FakeEngine(FakeEngineConfig(chunks=4, chunk_bytes=4, ttft_ms=5000)),
                          connector=TcpConnector())
        async with running(slow), running(client_for(port)) as client:
            await until(lambda: any(link.offers("fake") for link in client.links))
            asked = asyncio.create_task(streamed(client))
            await until(lambda: slow.stats.sealed == 1)
            async with running(worker_for(port)) as good:
                await until(lambda: len(net.proxy.workers) == 2)
                for link in slow.links:  # the slow worker dies mid-request
                    assert link.peer is not None
                    link.peer.close("test: the worker dies")
                assert await asyncio.wait_for(asked, T)
                assert good.stats.sealed == 1 and good.stats.completed == 1
                assert net.proxy.stats.failovers == 1
                # it joined after the request was sealed: its key was asked for (Route)
                assert net.proxy.stats.seal_routes == 1
                assert client.stats.receipts == 1 and client.stats.failed == 0


async def test_receipts_hold_across_a_renewed_worker_certificate() -> None:
    """A worker whose certificate lives 3 s renews it (and its key) under load; it tells
    the proxy before it signs with the new one, so every answer keeps a checked receipt."""
    async with running_proxy() as net:
        port = net.proxy.port
        worker = WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                         node_id="w1",
                                         attestation=AttestationConfig(cert_lifetime_s=3.0)),
                            FakeEngine(FakeEngineConfig(chunks=4, chunk_bytes=4)),
                            connector=TcpConnector())
        async with running(worker), running(client_for(port)) as client:
            await until(lambda: any(link.offers("fake") for link in client.links))
            first = worker._identity.generation
            answers = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 4.0
            while loop.time() < deadline:
                assert await streamed(client)
                answers += 1
            assert worker._identity.generation > first
            assert client.stats.receipts == answers and client.stats.failed == 0


async def test_a_request_sealed_to_two_workers_fails_over_without_a_round_trip() -> None:
    """Both workers are in the client's roster: the request is sealed to both, so when the
    first dies before answering, the second takes it with no Route."""
    async with running_proxy() as net:
        port = net.proxy.port

        def worker(name: str, ttft_ms: float) -> WorkerNode:
            return WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                           node_id=name),
                              FakeEngine(FakeEngineConfig(chunks=4, chunk_bytes=4,
                                                          ttft_ms=ttft_ms)),
                              connector=TcpConnector())
        a, b = worker("w-a", 5000), worker("w-b", 5000)
        async with running(a), running(b), running(client_for(port)) as client:
            await until(lambda: len(client.roster) == 2
                        and all(w.certificate for w in client.roster))
            asked = asyncio.create_task(streamed(client))
            await until(lambda: a.stats.sealed + b.stats.sealed == 1)
            first, other = (a, b) if a.stats.sealed else (b, a)
            other.engine.config = replace(other.engine.config, ttft_ms=0)  # type: ignore[attr-defined]
            for link in first.links:
                assert link.peer is not None
                link.peer.close("test: the worker dies")
            assert await asyncio.wait_for(asked, T)
            assert other.stats.completed == 1 and net.proxy.stats.failovers == 1
            assert net.proxy.stats.seal_routes == 0 and net.proxy.stats.sealed == 1
            assert client.stats.receipts == 1


async def test_receipts_leave_out_the_certificates_the_client_already_has() -> None:
    """The worker's certificate came with the roster, the proxy's with the first receipt:
    later receipts name both by hash, and the client still keeps them whole."""
    async def check(s: Setup) -> None:
        sent: list[Receipt] = []

        def watch(msg: Message) -> Message | None:
            if type(msg) is End and msg.receipt:
                sent.append(Receipt.decode(msg.receipt))
            return msg
        tamper(s.proxy, watch)
        for _ in range(3):
            assert await streamed(s.client)
        assert len(sent) == 3 and s.client.stats.receipts == 3
        assert not sent[0].worker_certificate and sent[0].proxy_certificate
        assert all(not r.worker_certificate and not r.proxy_certificate for r in sent[1:])
        async with httpx.AsyncClient() as http:
            for rid in list(s.client.receipts._kept):
                got = Receipt.decode((await http.get(
                    f"{s.client.http.url}/v1/receipts/{rid}")).content)
                assert got.worker_certificate and got.proxy_certificate

    await network_run(check)


def test_a_forwarded_certificate_that_does_not_parse_is_refused_with_its_rule() -> None:
    """A worker's certificate comes from the proxy: one of an unknown X.509 version (or
    no certificate at all) is refused as cert_format, never an unhandled error."""
    from cocoon.attestation.config import AttestationConfig as Config
    from cocoon.errors import EvidenceInvalid
    from cocoon.nodes.channels import build_channels

    check = build_channels(Config(), role="client").check
    good = TlsIdentity.create(NoneProvider(), "worker", "fake").certificate.public_bytes(
        serialization.Encoding.DER)
    assert check(good, "worker")[1].role == "worker"
    v6 = good.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x06", 1)
    assert v6 != good
    for bad in (v6, b"", b"not a certificate"):
        with pytest.raises(EvidenceInvalid) as caught:
            check(bad, "worker")
        assert caught.value.rule == "cert_format"


def test_the_receipt_book_keeps_compact_receipts_small_and_whole_on_request() -> None:
    """4,096 receipts stay in memory: each costs its compact JSON (about 1 KiB here), not
    orjson's working buffer (4 KiB and more), and comes back whole with its certificate."""
    import tracemalloc

    identity = TlsIdentity.create(NoneProvider(), "worker", "fake")
    cert = identity.certificate.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(cert).hexdigest()
    book = ReceiptBook("")
    receipts = []
    for i in range(300):
        part = WorkerPart("w1", f"{i:064x}", "1" * 64, 3, True, "fake", "", "", 5, 7, 0, 0,
                          1_700_000_000 + i, digest)
        receipts.append(Receipt(part, sign_part(part, identity.key), worker_certificate=cert))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, r in enumerate(receipts):
            book.keep(f"id{i}", r)
        per_receipt = (tracemalloc.get_traced_memory()[0] - before) / len(receipts)
    finally:
        tracemalloc.stop()
    assert per_receipt < 2048, per_receipt
    whole = Receipt.decode(book.get("id7") or b"")
    assert whole.worker_certificate == cert and whole.worker == receipts[7].worker
    assert book.get("nope") is None


def test_a_receipt_signed_by_a_worker_the_request_was_not_sealed_to_is_refused() -> None:
    """The client seals to the roster's worker ``wa``; an End whose receipt is signed by
    ``wb`` (attested alike, naming the same request and records) is SealBroken, while
    ``wa``'s own receipt of the same answer holds (the seal key its verified receipt
    names)."""
    import time

    from cocoon.attestation.config import AttestationConfig as Config
    from cocoon.attestation.receipt import sha256_hex
    from cocoon.crypto.seal import (
        KeyUnwrapper,
        KeyWrapper,
        ResponseSealer,
        decode_keys,
        open_request,
        route_info,
    )
    from cocoon.errors import SealBroken
    from cocoon.nodes.channels import build_channels
    from cocoon.nodes.client.sealing import RequestSeal
    from cocoon.openai import Envelope
    from cocoon.wire import Request, WorkerInfo

    check = build_channels(Config(), role="client").check
    keys = {name: new_seal_key() for name in ("wa", "wb")}
    ids = {name: TlsIdentity.create(NoneProvider(), "worker", "fake",
                                    seal_key=seal_public_bytes(key))
           for name, key in keys.items()}
    der = {name: i.certificate.public_bytes(serialization.Encoding.DER)
           for name, i in ids.items()}
    env = Envelope.parse("chat", json.dumps({"model": "fake", "messages": MESSAGES,
                                             "stream": True}).encode())[0]
    seal = RequestSeal(env, "on", check, KeyWrapper(),
                       (WorkerInfo("wa", "unattested", b"", ("fake",), der["wa"]),))
    req = seal.request(Request(1, "chat", "fake", True, 1000, env.body))
    assert set(decode_keys(req.seal_keys)) == {"wa"}
    body, response_key = open_request(req.body, decode_keys(req.seal_keys)["wa"],
                                      KeyUnwrapper(keys["wa"]), route_info("chat", "fake", True))
    assert body == env.body
    sealer = ResponseSealer(response_key)
    assert seal.open(sealer.seal(b"data: hi\n\n", 1)) == b"data: hi\n\n"

    def end_signed_by(name: str) -> End:
        part = WorkerPart(name, sha256_hex(req.body), sealer.transcript.hex(), 1, True,
                          "fake", "", "", 3, 1, 0, 0, int(time.time()), sha256_hex(der[name]))
        receipt = Receipt(part, sign_part(part, ids[name].key), worker_certificate=der[name])
        return End(1, 3, 1, 0, 0, receipt.encode())

    with pytest.raises(SealBroken, match="not sealed to"):
        seal.receipt(end_signed_by("wb"))
    held = seal.receipt(end_signed_by("wa"))
    assert held is not None and held.worker.worker == "wa"

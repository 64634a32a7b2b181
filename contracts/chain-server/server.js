#!/usr/bin/env node
'use strict';
// Embedded chain server: a long-lived @ton/sandbox blockchain driven over stdin/stdout with
// newline-delimited JSON-RPC. Used by cocoon.chain.embedded (Python).
//
//   node contracts/chain-server/server.js [--state FILE] [--now UNIX]
//
// Request:  {"id": 1, "cmd": "deploy", ...params}\n
// Response: {"id": 1, "ok": true, "result": {...}}\n   or   {"id": 1, "ok": false, "error": "..."}\n
// At start the server prints one line {"ready": true, "now": ..., "restored": bool}.
//
// Persistence (--state FILE): after every mutating command (deploy, send, set_time, treasury)
// the WHOLE blockchain state is persisted: `blockchain.snapshot()` converted with the sandbox's
// own `snapshotToSerializable()` (accounts as BOCs, config, lt, time, libs, random seed),
// without the transaction history, written to FILE.tmp then renamed over FILE (atomic).
// On start, FILE (when present) is loaded with `snapshotFromSerializable()` + `loadFrom()`.
// No command log / replay is needed.
//
// All coin amounts and big integers travel as decimal strings; cells as base64 BOCs;
// addresses in raw form "0:<hex>".
const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { Blockchain, snapshotToSerializable, snapshotFromSerializable } = require('@ton/sandbox');
const { Address, Cell, SendMode, beginCell, contractAddress, TupleBuilder } = require('@ton/core');

const BUILD = path.resolve(__dirname, '..', 'build');

const OP = {
    topup: 0xf172e6c2,
    client_charge: 0xbb63ff93,
    worker_payout: 0xa040ad28,
    request_close: 0xfafa6cc1,
    finalize_close: 0x2f0b5c31,
    payee_close: 0x7c3e91a2,
    withdraw: 0xda068e78,
    payout: 0xc59a7cd3,
    refund: 0xc68ebc7b,
    add_stake: 0x9713f187,
    request_unstake: 0x6a1f6a60,
    unstake: 0xb51d5a01,
};
const MUTATING = new Set(['deploy', 'send', 'set_time', 'treasury']);

function parseArgs(argv) {
    const out = { state: null, now: null };
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === '--state') out.state = argv[++i];
        else if (argv[i] === '--now') out.now = Number(argv[++i]);
        else throw new Error(`unknown argument ${argv[i]}`);
    }
    return out;
}

const codeCache = new Map();
function loadCode(name) {
    if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`bad contract name ${name}`);
    if (!codeCache.has(name)) {
        const file = path.join(BUILD, `${name}.json`);
        if (!fs.existsSync(file)) throw new Error(`unknown contract ${name} (no build/${name}.json)`);
        const j = JSON.parse(fs.readFileSync(file, 'utf-8'));
        const code = Cell.fromBoc(Buffer.from(j.codeBoc64, 'base64'))[0];
        if (code.hash().toString('hex') !== j.codeHashHex) throw new Error(`${name}: build json hash mismatch`);
        codeCache.set(name, code);
    }
    return codeCache.get(name);
}

const big = (v) => BigInt(v);
const addr = (s) => Address.parse(s);
const raw = (a) => (a ? a.toRawString() : null);
const hex32 = (h) => {
    const b = Buffer.from(h, 'hex');
    if (b.length !== 32) throw new Error('expected 32 bytes hex');
    return b;
};

// Initial data from structured fields (same layout as contracts/tests/helpers.js channelData()).
function channelData(d) {
    const parties = beginCell()
        .storeAddress(addr(d.funder))
        .storeAddress(addr(d.payee))
        .storeBuffer(hex32(d.payeePubkey), 32)
        .storeUint(d.closeDelay, 32)
        .storeUint(big(d.channelId), 64)
        .endCell();
    return beginCell()
        .storeCoins(0).storeCoins(0).storeUint(0, 64).storeUint(0, 2).storeUint(0, 32)
        .storeBuffer(hex32(d.signerPubkey), 32)
        .storeRef(parties)
        .endCell();
}

function buildData(contract, params) {
    if (params.dataBoc) return Cell.fromBase64(params.dataBoc);
    if (contract === 'client_channel' || contract === 'worker_channel') return channelData(params.data || {});
    throw new Error(`contract ${contract}: structured data not supported, pass dataBoc`);
}

// Structured message bodies (layouts of contracts/README.md / tests/helpers.js).
function buildBody(p) {
    if (p.body) return Cell.fromBase64(p.body);
    if (!p.op) return beginCell().endCell();
    const o = p.op;
    const code = OP[o.name];
    if (code === undefined) throw new Error(`unknown op ${o.name}`);
    const b = beginCell().storeUint(code, 32).storeUint(big(o.queryId ?? 0), 64);
    if (o.name === 'topup' || o.name === 'add_stake') b.storeCoins(big(o.amount));
    return b.endCell();
}

function describeTx(tx) {
    const d = tx.description;
    const out = {
        address: raw(new Address(0, Buffer.from(tx.address.toString(16).padStart(64, '0'), 'hex'))),
        lt: tx.lt.toString(),
        from: tx.inMessage && tx.inMessage.info.src && tx.inMessage.info.type === 'internal' ? raw(tx.inMessage.info.src) : null,
        inValue: tx.inMessage && tx.inMessage.info.type === 'internal' ? tx.inMessage.info.value.coins.toString() : '0',
        totalFees: tx.totalFees.coins.toString(),
        exitCode: null,
        computeSkipped: null,
        aborted: null,
        actionSuccess: null,
        outMessages: [],
    };
    if (d.type === 'generic') {
        out.aborted = d.aborted;
        if (d.computePhase.type === 'vm') out.exitCode = d.computePhase.exitCode;
        else out.computeSkipped = d.computePhase.reason;
        out.actionSuccess = d.actionPhase ? d.actionPhase.success : null;
    }
    for (const m of tx.outMessages.values()) {
        if (m.info.type !== 'internal') continue;
        let op = null;
        try {
            const s = m.body.beginParse();
            if (s.remainingBits >= 32) op = s.loadUint(32);
        } catch (_) { /* empty body */ }
        out.outMessages.push({
            to: raw(m.info.dest), value: m.info.value.coins.toString(), fwdFee: m.info.forwardFee.toString(),
            op, body: m.body.toBoc().toString('base64'),
        });
    }
    return out;
}

function sendResult(res, to) {
    const txs = res.transactions.map(describeTx);
    const target = txs.find((t) => t.address === raw(to));
    return {
        exitCode: target ? target.exitCode : null,
        aborted: target ? target.aborted : null,
        success: !!target && target.exitCode === 0 && target.aborted === false && target.actionSuccess !== false,
        transactions: txs,
    };
}

function stackItem(item) {
    switch (item.type) {
        case 'int': return { type: 'int', value: item.value.toString() };
        case 'null': return { type: 'null' };
        case 'cell': return { type: 'cell', boc: item.cell.toBoc().toString('base64') };
        case 'slice':
        case 'builder': {
            const r = { type: item.type, boc: item.cell.toBoc().toString('base64') };
            try {
                const a = item.cell.beginParse().loadMaybeAddress();
                if (a) r.address = raw(a);
            } catch (_) { /* not an address */ }
            return r;
        }
        case 'tuple': return { type: 'tuple', items: item.items.map(stackItem) };
        default: return { type: item.type };
    }
}

function buildArgs(args) {
    const tb = new TupleBuilder();
    for (const a of args || []) {
        if (a.type === 'int') tb.writeNumber(big(a.value));
        else if (a.type === 'address') tb.writeAddress(addr(a.value));
        else if (a.type === 'cell') tb.writeCell(Cell.fromBase64(a.boc));
        else if (a.type === 'slice') tb.writeSlice(Cell.fromBase64(a.boc));
        else throw new Error(`bad arg type ${a.type}`);
    }
    return tb.build();
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const bc = await Blockchain.create();
    let restored = false;
    if (opts.state && fs.existsSync(opts.state)) {
        const ser = JSON.parse(fs.readFileSync(opts.state, 'utf-8'));
        await bc.loadFrom(snapshotFromSerializable(ser));
        restored = true;
    }
    if (bc.now === undefined) bc.now = opts.now ?? Math.floor(Date.now() / 1000);

    function persist(file) {
        const ser = snapshotToSerializable(bc.snapshot());
        ser.transactions = [];  // history is not state; keeps the file small
        const tmp = `${file}.tmp`;
        const fd = fs.openSync(tmp, 'w');
        fs.writeSync(fd, JSON.stringify(ser));
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        fs.renameSync(tmp, file);
    }

    async function treasury(name) {
        return (await bc.treasury(name)).address;
    }
    // The message is sent BY the treasury wallet (an external message to it, then its internal
    // message with PAY_GAS_SEPARATELY), so the sender's balance really pays value + fees.
    async function sendFrom(name, args) {
        const wallet = await bc.treasury(name);
        return wallet.send({ sendMode: SendMode.PAY_GAS_SEPARATELY, ...args });
    }

    const handlers = {
        async treasury(p) {
            const a = await treasury(p.name);
            return { address: raw(a), balance: (await bc.getContract(a)).balance.toString() };
        },
        async deploy(p) {
            const code = loadCode(p.contract);
            const data = buildData(p.contract, p);
            const init = { code, data };
            const to = contractAddress(p.workchain ?? 0, init);
            const res = await sendFrom(p.from || 'deployer', {
                to, value: big(p.value ?? '50000000'), body: buildBody(p), init, bounce: false,
            });
            return { address: raw(to), ...sendResult(res, to) };
        },
        async send(p) {
            const to = addr(p.to);
            const res = await sendFrom(p.from, { to, value: big(p.value), body: buildBody(p), bounce: p.bounce ?? true });
            return sendResult(res, to);
        },
        async get(p) {
            const r = await bc.runGetMethod(addr(p.address), p.method, buildArgs(p.args));
            return { exitCode: r.exitCode, gasUsed: r.gasUsed.toString(), stack: r.stack.map(stackItem) };
        },
        async balance(p) {
            const c = await bc.getContract(addr(p.address));
            const st = c.accountState ? c.accountState.type : 'nonexist';
            return { balance: c.balance.toString(), state: st };
        },
        // The account's current code and data (what a liteserver's getAccountState returns).
        async account(p) {
            const c = await bc.getContract(addr(p.address));
            const st = c.accountState;
            if (!st || st.type !== 'active') return { state: st ? st.type : 'nonexist', balance: c.balance.toString() };
            return {
                state: 'active', balance: c.balance.toString(),
                code: st.state.code ? st.state.code.toBoc().toString('base64') : null,
                data: st.state.data ? st.state.data.toBoc().toString('base64') : null,
            };
        },
        async set_time(p) {
            bc.now = Number(p.now);
            return { now: bc.now };
        },
        async now() {
            return { now: bc.now };
        },
        async snapshot(p) {
            persist(p.path);
            return { path: p.path };
        },
        async shutdown() {
            return { bye: true };
        },
    };

    const write = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
    write({ ready: true, now: bc.now, restored });

    const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
    // one command at a time, in order
    let chain = Promise.resolve();
    rl.on('line', (line) => {
        if (!line.trim()) return;
        chain = chain.then(async () => {
            let req;
            try {
                req = JSON.parse(line);
            } catch (e) {
                write({ id: null, ok: false, error: `bad json: ${e.message}` });
                return;
            }
            const h = handlers[req.cmd];
            if (!h) {
                write({ id: req.id, ok: false, error: `unknown command ${req.cmd}` });
                return;
            }
            try {
                const result = await h(req);
                if (opts.state && MUTATING.has(req.cmd)) persist(opts.state);
                write({ id: req.id, ok: true, result });
                if (req.cmd === 'shutdown') process.exit(0);
            } catch (e) {
                write({ id: req.id, ok: false, error: String(e && e.message ? e.message : e) });
            }
        });
    });
    rl.on('close', () => { chain.then(() => process.exit(0)); });
}

main().catch((e) => {
    process.stderr.write(`chain-server: ${e && e.stack ? e.stack : e}\n`);
    process.exit(1);
});

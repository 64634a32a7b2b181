'use strict';
// Shared helpers for the sandbox tests: load the COMPILED code from build/*.json,
// build initial data / message bodies exactly as documented in contracts/README.md,
// and inspect transactions.
const fs = require('fs');
const path = require('path');
const assert = require('node:assert/strict');
const { Blockchain, internal } = require('@ton/sandbox');
const { Cell, beginCell, contractAddress, toNano } = require('@ton/core');
const { keyPairFromSeed, sign } = require('@ton/crypto');
const crypto = require('crypto');

const BUILD = path.resolve(__dirname, '..', 'build');

const OP = {
    TOPUP: 0xf172e6c2,
    CLIENT_CHARGE: 0xbb63ff93,
    WORKER_PAYOUT: 0xa040ad28,
    REQUEST_CLOSE: 0xfafa6cc1,
    FINALIZE_CLOSE: 0x2f0b5c31,
    PAYEE_CLOSE: 0x7c3e91a2,
    WITHDRAW: 0xda068e78,
    PAYOUT: 0xc59a7cd3,
    REFUND: 0xc68ebc7b,
    EXCESSES: 0xd53276db,
    // registry
    UPDATE_PARAMS: 0x022fa189,
    ADD_IMAGE_HASH: 0xe34b1c60,
    DEL_IMAGE_HASH: 0x8d94a79a,
    ADD_MODEL_HASH: 0xc146134d,
    DEL_MODEL_HASH: 0x92b11c18,
    CHANGE_OWNER: 0xc4a1ae54,
    LIST_PROXY: 0x4f1d2c83,      // stake -> registry
    UNLIST_PROXY: 0x2b7e90d4,    // stake -> registry
    // proxy stake
    ADD_STAKE: 0x9713f187,
    STATE_COMMIT: 0x5c1a7e3b,
    REQUEST_UNSTAKE: 0x6a1f6a60,
    UNSTAKE: 0xb51d5a01,
    REGISTER: 0x7a3c51e9,
    DEREGISTER: 0x91e4b6f2,
};

const ERR = {
    WRONG_SENDER: 100,
    BAD_SIGNATURE: 101,
    REPLAY: 102,
    AMOUNT_DECREASED: 103,
    INSUFFICIENT_BALANCE: 104,
    EARLY_CLOSE: 105,
    WRONG_STATE: 106,
    INSUFFICIENT_VALUE: 107,
    WRONG_CHANNEL: 108,
    WRONG_VOUCHER_KIND: 109,
    ALREADY_EXISTS: 110,
    NOT_FOUND: 111,
    STAKE_TOO_LOW: 112,
    WRONG_REGISTRY: 113,
    UNKNOWN_OP: 0xffff,
};

const TOPUP_FEE = 10000000n;

function loadCode(name) {
    const j = JSON.parse(fs.readFileSync(path.join(BUILD, `${name}.json`), 'utf-8'));
    const code = Cell.fromBoc(Buffer.from(j.codeBoc64, 'base64'))[0];
    assert.equal(code.hash().toString('hex'), j.codeHashHex, `${name}: build json hash mismatch`);
    return code;
}

function keyPair(seedText) {
    return keyPairFromSeed(crypto.createHash('sha256').update(seedText).digest());
}

function channelData({ funder, payee, signerPubkey, payeePubkey, closeDelay, channelId }) {
    const parties = beginCell()
        .storeAddress(funder)
        .storeAddress(payee)
        .storeBuffer(payeePubkey, 32)
        .storeUint(closeDelay, 32)
        .storeUint(channelId, 64)
        .endCell();
    return beginCell()
        .storeCoins(0)          // balance
        .storeCoins(0)          // charged (cumulative)
        .storeUint(0, 64)       // last seqno
        .storeUint(0, 2)        // state: open
        .storeUint(0, 32)       // close_at
        .storeBuffer(signerPubkey, 32)
        .storeRef(parties)
        .endCell();
}

// ProxyStorage of a fresh stake (contracts/README.md): the registry recomputes this to check a listing
function proxyData({ owner, pubkey, minStake, delay, registry }) {
    const cfg = beginCell().storeAddress(owner).storeCoins(minStake).storeUint(delay, 32).storeAddress(registry).endCell();
    return beginCell()
        .storeBuffer(pubkey, 32).storeCoins(0).storeUint(0, 2).storeUint(0, 32)
        .storeUint(0, 64).storeUint(0, 256).storeUint(0, 32)
        .storeRef(cfg).endCell();
}

function voucherPayload(op, channel, seqno, cumulative) {
    return beginCell()
        .storeUint(op, 32)
        .storeAddress(channel)
        .storeUint(seqno, 64)
        .storeCoins(cumulative)
        .endCell();
}

function voucherBody(outerOp, queryId, secretKey, payload) {
    const signature = sign(payload.hash(), secretKey);
    return beginCell().storeUint(outerOp, 32).storeUint(queryId, 64).storeBuffer(signature).storeRef(payload).endCell();
}

function simpleBody(op, queryId = 0) {
    return beginCell().storeUint(op, 32).storeUint(queryId, 64).endCell();
}

function topUpBody(amount, queryId = 0) {
    return beginCell().storeUint(OP.TOPUP, 32).storeUint(queryId, 64).storeCoins(amount).endCell();
}

async function newChain(now = 1_800_000_000) {
    const blockchain = await Blockchain.create();
    blockchain.now = now;
    return blockchain;
}

async function send(blockchain, { from, to, value, body, init, bounce = true }) {
    return blockchain.sendMessage(internal({ from, to, value, body: body || beginCell().endCell(), stateInit: init, bounce }));
}

// the transaction executed on `addr` by the injected message
function txOn(result, addr) {
    const tx = result.transactions.find((t) => t.inMessage && t.inMessage.info.dest && addr.equals(t.inMessage.info.dest));
    assert.ok(tx, `no transaction on ${addr}`);
    return tx;
}

function exitCode(tx) {
    const d = tx.description;
    assert.equal(d.type, 'generic');
    if (d.computePhase.type !== 'vm') return `skipped:${d.computePhase.reason}`;
    return d.computePhase.exitCode;
}

function assertOk(result, addr) {
    const tx = txOn(result, addr);
    assert.equal(exitCode(tx), 0, 'compute phase failed');
    assert.equal(tx.description.aborted, false, 'transaction aborted');
    if (tx.description.actionPhase) assert.equal(tx.description.actionPhase.success, true, 'action phase failed');
    return tx;
}

function assertExit(result, addr, code) {
    const tx = txOn(result, addr);
    assert.equal(exitCode(tx), code);
    assert.equal(tx.description.aborted, true);
    return tx;
}

// internal messages sent by `from` in this result: [{to, value, body}]
function outMessages(result, from) {
    const out = [];
    for (const t of result.transactions) {
        for (const m of t.outMessages.values()) {
            if (m.info.type === 'internal' && from.equals(m.info.src)) {
                out.push({ to: m.info.dest, value: m.info.value.coins, fwdFee: m.info.forwardFee, body: m.body });
            }
        }
    }
    return out;
}

async function balanceOf(blockchain, addr) {
    return (await blockchain.getContract(addr)).balance;
}

module.exports = {
    OP, ERR, TOPUP_FEE, loadCode, keyPair, channelData, proxyData, voucherPayload, voucherBody, simpleBody, topUpBody,
    newChain, send, txOn, exitCode, assertOk, assertExit, outMessages, balanceOf,
    beginCell, contractAddress, toNano, Cell,
};

#!/usr/bin/env node
'use strict';
// Test helper for tests/chain/test_chain_ton.py: real TVM transactions as BOCs, to check
// how cocoon.chain.ton reads a liteserver's transactions (pytoniq's Transaction parser).
//
//   NODE_PATH=contracts/node_modules node tests/chain/sandbox_tx.js '<json>'
//
// <json>: {"code": b64, "data": b64, "sends": [{"value": "n", "body": b64, "init": bool}]}
// Each send goes from a sandbox treasury to the contract (StateInit {code, data} attached
// when "init"); output: one JSON line {"wallet", "contract", "sends": [{"txs": [{"address",
// "boc"}]}]} with every transaction of each send serialised back to its cell.
const { Blockchain } = require('@ton/sandbox');
const { Cell, beginCell, contractAddress, storeTransaction, SendMode } = require('@ton/core');

async function main() {
    const p = JSON.parse(process.argv[2]);
    const bc = await Blockchain.create();
    bc.now = 1800000000;
    const wallet = await bc.treasury('ton-test');
    const init = { code: Cell.fromBase64(p.code), data: Cell.fromBase64(p.data) };
    const to = contractAddress(0, init);
    const out = { wallet: wallet.address.toRawString(), contract: to.toRawString(), sends: [] };
    for (const s of p.sends) {
        const res = await wallet.send({
            to, value: BigInt(s.value), body: Cell.fromBase64(s.body),
            init: s.init ? init : undefined, bounce: !s.init, sendMode: SendMode.PAY_GAS_SEPARATELY,
        });
        out.sends.push({
            txs: res.transactions.map((tx) => ({
                address: '0:' + tx.address.toString(16).padStart(64, '0'),
                boc: beginCell().store(storeTransaction(tx)).endCell().toBoc().toString('base64'),
            })),
        });
    }
    process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
    process.stderr.write(`sandbox_tx: ${e && e.stack ? e.stack : e}\n`);
    process.exit(1);
});

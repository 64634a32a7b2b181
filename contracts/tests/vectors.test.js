'use strict';
// Cross-language check: voucher vectors produced by python/voucher_reference.py
// (pytoniq-core) must be byte-identical to what the JS helpers (the layout the
// emulator tests feed to the compiled contracts) produce.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { Address, Cell } = require('@ton/core');
const { keyPairFromSeed, sign, signVerify } = require('@ton/crypto');
const h = require('./helpers');

const vectors = JSON.parse(fs.readFileSync(path.join(__dirname, 'vectors', 'voucher_vectors.json'), 'utf-8'));

describe('voucher vectors (pytoniq-core == @ton/core)', () => {
    it('has vectors', () => assert.ok(vectors.length >= 4));
    for (const v of vectors) {
        it(v.name, () => {
            const kp = keyPairFromSeed(Buffer.from(v.privateSeedHex, 'hex'));
            assert.equal(kp.publicKey.toString('hex'), v.publicKeyHex);
            const payload = h.voucherPayload(v.op, Address.parseRaw(v.channel), BigInt(v.seqno), BigInt(v.cumulative));
            assert.equal(payload.hash().toString('hex'), v.payloadHashHex);
            assert.ok(Cell.fromBoc(Buffer.from(v.payloadBocHex, 'hex'))[0].equals(payload));
            assert.equal(sign(payload.hash(), kp.secretKey).toString('hex'), v.signatureHex);
            assert.ok(signVerify(payload.hash(), Buffer.from(v.signatureHex, 'hex'), kp.publicKey));
            const msg = h.voucherBody(v.op, BigInt(v.seqno), kp.secretKey, payload);
            assert.ok(Cell.fromBoc(Buffer.from(v.messageBocHex, 'hex'))[0].equals(msg));
        });
    }
});

'use strict';
const { describe, it, beforeEach } = require('node:test');
const assert = require('node:assert/strict');
const { Dictionary } = require('@ton/core');
const h = require('./helpers');
const { OP, ERR, toNano, beginCell } = h;

const DEFAULT_PARAMS = {
    pricePerToken: 20n, workerFee: 15n, promptMult: 10000, cachedMult: 1000, completionMult: 80000, reasoningMult: 80000,
    proxyCloseDelay: 86400, clientCloseDelay: 3600, minProxyStake: toNano('10'), minClientStake: toNano('1'),
};

function paramsCell(p) {
    return beginCell()
        .storeCoins(p.pricePerToken).storeCoins(p.workerFee)
        .storeUint(p.promptMult, 32).storeUint(p.cachedMult, 32).storeUint(p.completionMult, 32).storeUint(p.reasoningMult, 32)
        .storeUint(p.proxyCloseDelay, 32).storeUint(p.clientCloseDelay, 32)
        .storeCoins(p.minProxyStake).storeCoins(p.minClientStake)
        .endCell();
}

function registryData(owner, params, imageHashes = []) {
    const images = Dictionary.empty(Dictionary.Keys.BigUint(256), Dictionary.Values.Uint(32));
    for (const x of imageHashes) images.set(x, 0);
    return beginCell()
        .storeAddress(owner).storeUint(0, 32).storeUint(0, 32)
        .storeRef(paramsCell(params))
        .storeDict(images)
        .storeDict(null)
        .endCell();
}

const H1 = BigInt('0x' + 'aa'.repeat(32));
const H2 = BigInt('0x' + '0b'.repeat(32));
const hashBody = (op, hash, q = 0) => beginCell().storeUint(op, 32).storeUint(q, 64).storeUint(hash, 256).endCell();

describe('root_registry', () => {
    let bc, owner, stranger, addr;
    const sendFrom = (from, body) => h.send(bc, { from, to: addr, value: toNano('0.05'), body });
    const get = async (method, args = []) => (await bc.runGetMethod(addr, method, args)).stackReader;
    const versions = async () => { const s = await get('get_versions'); return [s.readNumber(), s.readNumber()]; };
    const imageVersion = async (x) => (await get('image_hash_version', [{ type: 'int', value: x }])).readNumber();
    const modelVersion = async (x) => (await get('model_hash_version', [{ type: 'int', value: x }])).readNumber();

    beforeEach(async () => {
        bc = await h.newChain();
        owner = (await bc.treasury('owner')).address;
        stranger = (await bc.treasury('stranger')).address;
        const init = { code: h.loadCode('root_registry'), data: registryData(owner, DEFAULT_PARAMS, [H2]) };
        addr = h.contractAddress(0, init);
        h.assertOk(await h.send(bc, { from: owner, to: addr, value: toNano('1'), init }), addr);
    });

    it('initial state readable via get methods', async () => {
        assert.deepEqual(await versions(), [0, 0]);
        assert.ok((await get('get_owner')).readAddress().equals(owner));
        const s = await get('get_params');
        const got = {};
        for (const k of Object.keys(DEFAULT_PARAMS)) got[k] = typeof DEFAULT_PARAMS[k] === 'bigint' ? s.readBigNumber() : s.readNumber();
        assert.deepEqual(got, DEFAULT_PARAMS);
        assert.equal(await imageVersion(H2), 0);   // present in the initial dict with version 0
        assert.equal(await imageVersion(H1), 0);
    });

    it('owner adds/removes image and model hashes; version bumps; duplicates and misses rejected', async () => {
        h.assertOk(await sendFrom(owner, hashBody(OP.ADD_IMAGE_HASH, H1)), addr);
        assert.equal(await imageVersion(H1), 1);
        assert.deepEqual(await versions(), [1, 0]);
        h.assertExit(await sendFrom(owner, hashBody(OP.ADD_IMAGE_HASH, H1)), addr, ERR.ALREADY_EXISTS);
        h.assertOk(await sendFrom(owner, hashBody(OP.ADD_MODEL_HASH, H1)), addr);
        assert.equal(await modelVersion(H1), 2);
        h.assertExit(await sendFrom(owner, hashBody(OP.ADD_MODEL_HASH, H1)), addr, ERR.ALREADY_EXISTS);
        h.assertOk(await sendFrom(owner, hashBody(OP.DEL_IMAGE_HASH, H1)), addr);
        assert.equal(await imageVersion(H1), 0);
        h.assertExit(await sendFrom(owner, hashBody(OP.DEL_IMAGE_HASH, H1)), addr, ERR.NOT_FOUND);
        h.assertOk(await sendFrom(owner, hashBody(OP.DEL_MODEL_HASH, H1)), addr);
        h.assertExit(await sendFrom(owner, hashBody(OP.DEL_MODEL_HASH, H1)), addr, ERR.NOT_FOUND);
        assert.equal(await modelVersion(H1), 0);
        assert.deepEqual(await versions(), [4, 0]);
    });

    it('owner updates params; params version bumps; malformed params rejected', async () => {
        const np = { ...DEFAULT_PARAMS, pricePerToken: 25n, clientCloseDelay: 7200, minClientStake: toNano('2') };
        h.assertOk(await sendFrom(owner, beginCell().storeUint(OP.UPDATE_PARAMS, 32).storeUint(1, 64).storeRef(paramsCell(np)).endCell()), addr);
        assert.deepEqual(await versions(), [1, 1]);
        const s = await get('get_params');
        assert.equal(s.readBigNumber(), 25n);
        s.skip(6);
        assert.equal(s.readNumber(), 7200);
        s.skip(1);
        assert.equal(s.readBigNumber(), toNano('2'));
        const bad = beginCell().storeCoins(1).endCell();
        const r = await sendFrom(owner, beginCell().storeUint(OP.UPDATE_PARAMS, 32).storeUint(1, 64).storeRef(bad).endCell());
        assert.notEqual(h.exitCode(h.txOn(r, addr)), 0);
        assert.deepEqual(await versions(), [1, 1]);
    });

    it('every update op is owner-only', async () => {
        const bodies = [
            hashBody(OP.ADD_IMAGE_HASH, H1), hashBody(OP.DEL_IMAGE_HASH, H2), hashBody(OP.ADD_MODEL_HASH, H1), hashBody(OP.DEL_MODEL_HASH, H1),
            beginCell().storeUint(OP.UPDATE_PARAMS, 32).storeUint(0, 64).storeRef(paramsCell(DEFAULT_PARAMS)).endCell(),
            beginCell().storeUint(OP.CHANGE_OWNER, 32).storeUint(0, 64).storeAddress(stranger).endCell(),
        ];
        for (const b of bodies) h.assertExit(await sendFrom(stranger, b), addr, ERR.WRONG_SENDER);
        assert.deepEqual(await versions(), [0, 0]);
        h.assertExit(await sendFrom(owner, beginCell().storeUint(0x0badc0de, 32).endCell()), addr, ERR.UNKNOWN_OP);
    });

    it('change owner hands over control', async () => {
        h.assertOk(await sendFrom(owner, beginCell().storeUint(OP.CHANGE_OWNER, 32).storeUint(0, 64).storeAddress(stranger).endCell()), addr);
        assert.ok((await get('get_owner')).readAddress().equals(stranger));
        h.assertExit(await sendFrom(owner, hashBody(OP.ADD_IMAGE_HASH, H1)), addr, ERR.WRONG_SENDER);
        h.assertOk(await sendFrom(stranger, hashBody(OP.ADD_IMAGE_HASH, H1)), addr);
        assert.deepEqual(await versions(), [2, 0]);
    });
});

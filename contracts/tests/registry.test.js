'use strict';
const { describe, it, beforeEach } = require('node:test');
const assert = require('node:assert/strict');
const { Dictionary } = require('@ton/core');
const h = require('./helpers');
const { OP, ERR, toNano, beginCell } = h;

const DEFAULT_PARAMS = {
    pricePerToken: 20n, workerFee: 15n, promptMult: 10000, cachedMult: 1000, completionMult: 80000, reasoningMult: 80000,
    proxyCloseDelay: 86400, clientCloseDelay: 3600, minProxyStake: toNano('10'), minClientStake: toNano('1'),
    trainingMult: 30000,
};

function paramsCell(p) {
    return beginCell()
        .storeCoins(p.pricePerToken).storeCoins(p.workerFee)
        .storeUint(p.promptMult, 32).storeUint(p.cachedMult, 32).storeUint(p.completionMult, 32).storeUint(p.reasoningMult, 32)
        .storeUint(p.proxyCloseDelay, 32).storeUint(p.clientCloseDelay, 32)
        .storeCoins(p.minProxyStake).storeCoins(p.minClientStake).storeUint(p.trainingMult, 32)
        .endCell();
}

function registryData(owner, params, imageHashes = []) {
    const images = Dictionary.empty(Dictionary.Keys.BigUint(256), Dictionary.Values.Uint(32));
    for (const x of imageHashes) images.set(x, 0);
    const book = beginCell().storeRef(h.loadCode('proxy_stake')).storeDict(null).endCell();
    return beginCell()
        .storeAddress(owner).storeUint(0, 32).storeUint(0, 32)
        .storeRef(paramsCell(params))
        .storeDict(images)
        .storeDict(null)
        .storeRef(book)
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
        const np = { ...DEFAULT_PARAMS, pricePerToken: 25n, clientCloseDelay: 7200, minClientStake: toNano('2'),
                     trainingMult: 50000 };
        h.assertOk(await sendFrom(owner, beginCell().storeUint(OP.UPDATE_PARAMS, 32).storeUint(1, 64).storeRef(paramsCell(np)).endCell()), addr);
        assert.deepEqual(await versions(), [1, 1]);
        const s = await get('get_params');
        assert.equal(s.readBigNumber(), 25n);
        s.skip(6);
        assert.equal(s.readNumber(), 7200);
        s.skip(1);
        assert.equal(s.readBigNumber(), toNano('2'));
        assert.equal(s.readNumber(), 50000);
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

    describe('proxy listings', () => {
        let operator, key, info;
        const opBody = (op, q = 0) => beginCell().storeUint(op, 32).storeUint(q, 64).endCell();
        const registerBody = (cell) => beginCell().storeUint(OP.REGISTER, 32).storeUint(0, 64).storeRef(cell).endCell();
        const listing = async (stake) => {
            const s = await get('get_proxy', [{ type: 'int', value: BigInt('0x' + stake.hash.toString('hex')) }]);
            return { version: s.readNumber(), stake: s.readBigNumber(), pubkey: s.readBigNumber() };
        };
        // a stake contract of `operator` with these terms, deployed and staked `amount`
        async function deployStake({ minStake = toNano('10'), amount = toNano('10'), registry = addr, seed = 'proxy-key' } = {}) {
            key = h.keyPair(seed);
            const init = { code: h.loadCode('proxy_stake'), data: h.proxyData({ owner: operator, pubkey: key.publicKey, minStake, delay: 600, registry }) };
            const stake = h.contractAddress(0, init);
            const body = beginCell().storeUint(OP.ADD_STAKE, 32).storeUint(0, 64).storeCoins(amount).endCell();
            h.assertOk(await h.send(bc, { from: operator, to: stake, value: amount + h.TOPUP_FEE, body, init }), stake);
            return stake;
        }
        const toStake = (stake, body) => h.send(bc, { from: operator, to: stake, value: toNano('0.2'), body });

        beforeEach(async () => {
            operator = (await bc.treasury('proxy-operator')).address;
            info = beginCell().storeStringTail('{"client":"10.0.0.1:8443"}').endCell();
        });

        it('a staked proxy lists itself through its stake; re-listing replaces; deregister removes', async () => {
            const stake = await deployStake();
            const r = await toStake(stake, registerBody(info));
            h.assertOk(r, stake);
            h.assertOk(r, addr);
            assert.deepEqual(await listing(stake), { version: 1, stake: toNano('10'), pubkey: BigInt('0x' + key.publicKey.toString('hex')) });
            assert.deepEqual(await versions(), [1, 0]);
            // the listing's owner and info, from the data cell as readers see it
            const data = (await bc.getContract(addr)).accountState.state.data.beginParse();
            data.loadAddress(); data.skip(64); data.loadRef(); data.loadMaybeRef(); data.loadMaybeRef();
            const book = data.loadRef().beginParse();
            book.loadRef();
            const entries = book.loadDict(Dictionary.Keys.BigUint(256), Dictionary.Values.Cell());
            const e = entries.get(BigInt('0x' + stake.hash.toString('hex'))).beginParse();
            assert.ok(e.loadAddress().equals(operator));
            e.skip(256); e.loadCoins(); e.skip(32);
            assert.ok(e.loadRef().equals(info));

            const info2 = beginCell().storeStringTail('{"client":"10.0.0.2:8443"}').endCell();
            h.assertOk(await toStake(stake, registerBody(info2)), addr);
            assert.equal((await listing(stake)).version, 2);
            h.assertOk(await toStake(stake, opBody(OP.DEREGISTER)), addr);
            assert.equal((await listing(stake)).version, 0);
            assert.deepEqual(await versions(), [3, 0]);
            // nothing left to remove: the registry refuses and the value bounces back to the stake
            const again = await toStake(stake, opBody(OP.DEREGISTER));
            h.assertExit(again, addr, ERR.NOT_FOUND);
            assert.ok(h.outMessages(again, addr).some((m) => m.to.equals(stake)), 'bounced');
            assert.deepEqual(await versions(), [3, 0]);
        });

        it('requesting to unstake removes the listing', async () => {
            const stake = await deployStake();
            h.assertOk(await toStake(stake, registerBody(info)), addr);
            const r = await toStake(stake, opBody(OP.REQUEST_UNSTAKE));
            h.assertOk(r, stake);
            h.assertOk(r, addr);
            assert.equal((await listing(stake)).version, 0);
        });

        it('refused: a stake below the registry minimum, a stake of another registry, a forged listing', async () => {
            // the stake contract's own minimum is lower than the network's
            const low = await deployStake({ minStake: toNano('1'), amount: toNano('5'), seed: 'low' });
            h.assertExit(await toStake(low, registerBody(info)), addr, ERR.STAKE_TOO_LOW);
            assert.equal((await listing(low)).version, 0);
            const elsewhere = await deployStake({ registry: stranger, seed: 'elsewhere' });
            // its stake forwards to its own registry; sent here by hand, the registry refuses it
            const cfgOf = async (stake) => (await bc.getContract(stake)).accountState.state.data.beginParse().loadRef();
            const forged = (pubkey, cfg) => beginCell().storeUint(OP.LIST_PROXY, 32).storeUint(0, 64)
                .storeBuffer(pubkey, 32).storeCoins(toNano('10')).storeRef(cfg).storeRef(info).endCell();
            h.assertExit(await sendFrom(stranger, forged(key.publicKey, await cfgOf(elsewhere))), addr, ERR.WRONG_SENDER);
            // a genuine stake's terms, sent from someone else's address
            const good = await deployStake({ seed: 'good' });
            h.assertExit(await sendFrom(stranger, forged(key.publicKey, await cfgOf(good))), addr, ERR.WRONG_SENDER);
            // ... and from the stake itself would be accepted, so the check is the sender's address
            h.assertOk(await toStake(good, registerBody(info)), addr);
            // a stranger cannot unlist anyone but itself
            h.assertExit(await sendFrom(stranger, opBody(OP.UNLIST_PROXY)), addr, ERR.NOT_FOUND);
            assert.equal((await listing(good)).version, 1);
            assert.deepEqual(await versions(), [1, 0]);
        });

        it('a genuine stake of another registry is refused here (its listing injected from its own address)', async () => {
            // such a stake only ever sends to its own registry; the emulator lets us send from
            // its address anyway, to show the registry check holds on its own
            const elsewhere = await deployStake({ registry: stranger, seed: 'elsewhere2' });
            const cfg = (await bc.getContract(elsewhere)).accountState.state.data.beginParse().loadRef();
            const body = beginCell().storeUint(OP.LIST_PROXY, 32).storeUint(0, 64)
                .storeBuffer(key.publicKey, 32).storeCoins(toNano('10')).storeRef(cfg).storeRef(info).endCell();
            h.assertExit(await h.send(bc, { from: elsewhere, to: addr, value: toNano('0.1'), body }), addr, ERR.WRONG_REGISTRY);
            assert.equal((await listing(elsewhere)).version, 0);
            // the same stake's terms with this registry's address would come from another address
            const here = await deployStake({ seed: 'elsewhere2' });
            assert.ok(!here.equals(elsewhere));
        });
    });
});

'use strict';
const { describe, it, beforeEach } = require('node:test');
const assert = require('node:assert/strict');
const { sign } = require('@ton/crypto');
const h = require('./helpers');
const { OP, ERR, toNano, beginCell } = h;

const DELAY = 86400;
const { proxyData } = h;

function commitPayload(op, proxy, seqno, stateHash) {
    return beginCell().storeUint(op, 32).storeAddress(proxy).storeUint(seqno, 64).storeUint(stateHash, 256).endCell();
}

function commitBody(secretKey, payload, queryId = 0) {
    return beginCell().storeUint(OP.STATE_COMMIT, 32).storeUint(queryId, 64).storeBuffer(sign(payload.hash(), secretKey)).storeRef(payload).endCell();
}

const stakeBody = (amount) => beginCell().storeUint(OP.ADD_STAKE, 32).storeUint(0, 64).storeCoins(amount).endCell();

describe('proxy_stake', () => {
    let bc, owner, stranger, registry, key, otherKey, addr, init;
    const sendFrom = (from, body, value = toNano('0.05')) => h.send(bc, { from, to: addr, value, body });
    const commit = (seqno, stateHash, opts = {}) =>
        sendFrom(stranger, commitBody((opts.key ?? key).secretKey, commitPayload(opts.op ?? OP.STATE_COMMIT, opts.proxy ?? addr, seqno, stateHash)));
    async function state() {
        const s = (await bc.runGetMethod(addr, 'get_proxy_state')).stackReader;
        return { state: s.readNumber(), stake: s.readBigNumber(), unlockAt: s.readNumber(), seqno: s.readBigNumber(), hash: s.readBigNumber(), at: s.readNumber() };
    }

    beforeEach(async () => {
        bc = await h.newChain();
        owner = (await bc.treasury('proxy-owner')).address;
        stranger = (await bc.treasury('stranger')).address;
        registry = (await bc.treasury('registry')).address;  // a wallet: receives what the stake sends it
        key = h.keyPair('proxy-key');
        otherKey = h.keyPair('attacker');
        init = { code: h.loadCode('proxy_stake'), data: proxyData({ owner, pubkey: key.publicKey, minStake: toNano('10'), delay: DELAY, registry }) };
        addr = h.contractAddress(0, init);
        h.assertOk(await h.send(bc, { from: owner, to: addr, value: toNano('6') + 10000000n, body: stakeBody(toNano('6')), init }), addr);
    });

    it('config readable; stake adds exactly; too little value rejected', async () => {
        const c = (await bc.runGetMethod(addr, 'get_proxy_config')).stackReader;
        assert.ok(c.readAddress().equals(owner));
        assert.equal(c.readBigNumber(), BigInt('0x' + key.publicKey.toString('hex')));
        assert.equal(c.readBigNumber(), toNano('10'));
        assert.equal(c.readNumber(), DELAY);
        assert.ok(c.readAddress().equals(registry));
        assert.equal((await state()).stake, toNano('6'));
        h.assertExit(await sendFrom(stranger, stakeBody(toNano('4')), toNano('4')), addr, ERR.INSUFFICIENT_VALUE);
        h.assertOk(await sendFrom(stranger, stakeBody(toNano('4')), toNano('4.01')), addr);
        assert.equal((await state()).stake, toNano('10'));
    });

    it('state commits: signed, strictly newer, need the minimum stake', async () => {
        h.assertExit(await commit(1, 0xabcn), addr, ERR.STAKE_TOO_LOW);
        h.assertOk(await sendFrom(owner, stakeBody(toNano('4')), toNano('4.01')), addr);
        bc.now += 10;
        h.assertOk(await commit(1, 0xabcn), addr);
        assert.deepEqual(await state(), { state: 0, stake: toNano('10'), unlockAt: 0, seqno: 1n, hash: 0xabcn, at: bc.now });
        h.assertExit(await commit(1, 0xdefn), addr, ERR.REPLAY);
        h.assertExit(await commit(2, 0xdefn, { key: otherKey }), addr, ERR.BAD_SIGNATURE);
        h.assertExit(await commit(2, 0xdefn, { op: 0x12345678 }), addr, ERR.WRONG_VOUCHER_KIND);
        h.assertExit(await commit(2, 0xdefn, { proxy: stranger }), addr, ERR.WRONG_CHANNEL);
        h.assertOk(await commit(5, 0xdefn), addr);
        assert.equal((await state()).hash, 0xdefn);
    });

    it('unstake: owner only, after the delay, pays everything to the owner', async () => {
        const T0 = bc.now;
        h.assertExit(await sendFrom(stranger, beginCell().storeUint(OP.REQUEST_UNSTAKE, 32).storeUint(0, 64).endCell()), addr, ERR.WRONG_SENDER);
        h.assertExit(await sendFrom(owner, beginCell().storeUint(OP.UNSTAKE, 32).storeUint(0, 64).endCell()), addr, ERR.WRONG_STATE);
        h.assertOk(await sendFrom(owner, beginCell().storeUint(OP.REQUEST_UNSTAKE, 32).storeUint(0, 64).endCell()), addr);
        assert.equal((await state()).unlockAt, T0 + DELAY);
        h.assertExit(await commit(1, 1n), addr, ERR.WRONG_STATE);
        h.assertExit(await sendFrom(owner, stakeBody(toNano('1')), toNano('2')), addr, ERR.WRONG_STATE);
        bc.now = T0 + DELAY - 1;
        h.assertExit(await sendFrom(owner, beginCell().storeUint(OP.UNSTAKE, 32).storeUint(0, 64).endCell()), addr, ERR.EARLY_CLOSE);
        bc.now = T0 + DELAY;
        h.assertExit(await sendFrom(stranger, beginCell().storeUint(OP.UNSTAKE, 32).storeUint(0, 64).endCell()), addr, ERR.WRONG_SENDER);
        const r = await sendFrom(owner, beginCell().storeUint(OP.UNSTAKE, 32).storeUint(0, 64).endCell());
        h.assertOk(r, addr);
        const out = h.outMessages(r, addr);
        assert.equal(out.length, 1);
        assert.ok(out[0].to.equals(owner));
        assert.ok(out[0].value >= toNano('6'));
        assert.equal(await h.balanceOf(bc, addr), 0n);
        assert.equal((await state()).state, 2);
        h.assertExit(await sendFrom(stranger, beginCell().storeUint(0x0badc0de, 32).endCell()), addr, ERR.UNKNOWN_OP);
    });

    it('register: owner only, active and staked; forwards the listing with the stake\'s terms', async () => {
        const info = beginCell().storeStringTail('{"client":"h:1"}').endCell();
        const reg = beginCell().storeUint(OP.REGISTER, 32).storeUint(7, 64).storeRef(info).endCell();
        h.assertExit(await sendFrom(owner, reg), addr, ERR.STAKE_TOO_LOW);   // 6 of 10 staked
        h.assertOk(await sendFrom(owner, stakeBody(toNano('4')), toNano('4.01')), addr);
        h.assertExit(await sendFrom(stranger, reg), addr, ERR.WRONG_SENDER);
        const r = await sendFrom(owner, reg, toNano('0.2'));
        h.assertOk(r, addr);
        const out = h.outMessages(r, addr);
        assert.equal(out.length, 1);
        assert.ok(out[0].to.equals(registry));
        assert.ok(out[0].value > toNano('0.19'), 'forwards what the owner attached, less gas');
        const b = out[0].body.beginParse();
        assert.equal(b.loadUint(32), OP.LIST_PROXY);
        assert.equal(b.loadUintBig(64), 7n);
        assert.equal(b.loadUintBig(256), BigInt('0x' + key.publicKey.toString('hex')));
        assert.equal(b.loadCoins(), toNano('10'));
        assert.ok(b.loadRef().equals(init.data.beginParse().loadRef()), 'the stake\'s config cell as deployed');
        assert.ok(b.loadRef().equals(info));
        assert.equal((await state()).stake, toNano('10'), 'registering costs no stake');
    });

    it('deregister and request-unstake send an unlisting to the registry; deregister is owner only', async () => {
        h.assertExit(await sendFrom(stranger, beginCell().storeUint(OP.DEREGISTER, 32).storeUint(0, 64).endCell()), addr, ERR.WRONG_SENDER);
        for (const op of [OP.DEREGISTER, OP.REQUEST_UNSTAKE]) {
            const r = await sendFrom(owner, beginCell().storeUint(op, 32).storeUint(3, 64).endCell());
            h.assertOk(r, addr);
            const out = h.outMessages(r, addr);
            assert.equal(out.length, 1);
            assert.ok(out[0].to.equals(registry));
            const b = out[0].body.beginParse();
            assert.equal(b.loadUint(32), OP.UNLIST_PROXY);
            assert.equal(b.loadUintBig(64), 3n);
        }
        const reg = beginCell().storeUint(OP.REGISTER, 32).storeUint(0, 64).storeRef(beginCell().endCell()).endCell();
        h.assertExit(await sendFrom(owner, reg), addr, ERR.WRONG_STATE);   // unstaking: no new listing
    });
});

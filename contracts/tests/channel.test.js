'use strict';
// Client and worker channels share one implementation (src/channel_common.tolk);
// the same suite runs against both compiled contracts with their role mapping.
const { describe, it, beforeEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');
const { OP, ERR, toNano } = h;

const KINDS = [
    { name: 'client_channel', funder: 'client', payee: 'proxy', signer: 'client', voucherOp: OP.CLIENT_CHARGE, otherOp: OP.WORKER_PAYOUT },
    { name: 'worker_channel', funder: 'proxy', payee: 'worker', signer: 'proxy', voucherOp: OP.WORKER_PAYOUT, otherOp: OP.CLIENT_CHARGE },
];

const CLOSE_DELAY = 3600;

for (const kind of KINDS) {
    describe(kind.name, () => {
        let bc, code, funder, payee, stranger, signerKey, otherKey, payeeKey, addr, init;

        async function state() {
            const r = await bc.runGetMethod(addr, 'get_channel_state');
            const s = r.stackReader;
            return { state: s.readNumber(), balance: s.readBigNumber(), charged: s.readBigNumber(), seqno: s.readBigNumber(), closeAt: s.readNumber() };
        }
        const sendFrom = (from, body, value = toNano('0.05')) => h.send(bc, { from, to: addr, value, body });
        const voucher = (seqno, cumulative, opts = {}) => {
            const payload = h.voucherPayload(opts.payloadOp ?? kind.voucherOp, opts.channel ?? addr, seqno, cumulative);
            return h.voucherBody(opts.outerOp ?? kind.voucherOp, opts.queryId ?? seqno, (opts.key ?? signerKey).secretKey, payload);
        };
        const submit = (seqno, cumulative, opts = {}) => sendFrom(opts.from ?? stranger, voucher(seqno, cumulative, opts));
        const opOf = (m) => m.body.beginParse().loadUint(32);
        const payouts = (r) => h.outMessages(r, addr).filter((m) => opOf(m) === OP.PAYOUT);
        // every redemption answers its sender with the value it attached, less the gas
        function assertExcessTo(r, sender, queryId) {
            const ex = h.outMessages(r, addr).filter((m) => opOf(m) === OP.EXCESSES);
            assert.equal(ex.length, 1);
            assert.ok(ex[0].to.equals(sender));
            const b = ex[0].body.beginParse();
            b.loadUint(32);
            assert.equal(b.loadUintBig(64), BigInt(queryId));
            assert.ok(ex[0].value > toNano('0.04') && ex[0].value < toNano('0.05'), `excess ${ex[0].value}`);
        }

        async function deploy(amount = toNano('10')) {
            const r = await h.send(bc, { from: funder, to: addr, value: amount + h.TOPUP_FEE, body: h.topUpBody(amount), init });
            h.assertOk(r, addr);
            return r;
        }

        beforeEach(async () => {
            bc = await h.newChain();
            code = h.loadCode(kind.name);
            funder = (await bc.treasury(kind.funder)).address;
            payee = (await bc.treasury(kind.payee)).address;
            stranger = (await bc.treasury('stranger')).address;
            signerKey = h.keyPair(`${kind.signer}-key`);
            payeeKey = h.keyPair(`${kind.payee}-key`);
            otherKey = h.keyPair('attacker-key');
            const data = h.channelData({ funder, payee, signerPubkey: signerKey.publicKey, payeePubkey: payeeKey.publicKey, closeDelay: CLOSE_DELAY, channelId: 7 });
            init = { code, data };
            addr = h.contractAddress(0, init);
        });

        it('deploys with a top-up and exposes parties', async () => {
            await deploy(toNano('10'));
            assert.deepEqual(await state(), { state: 0, balance: toNano('10'), charged: 0n, seqno: 0n, closeAt: 0 });
            const s = (await bc.runGetMethod(addr, 'get_channel_parties')).stackReader;
            assert.ok(s.readAddress().equals(funder));
            assert.ok(s.readAddress().equals(payee));
            assert.equal(s.readBigNumber(), BigInt('0x' + signerKey.publicKey.toString('hex')));
            assert.equal(s.readBigNumber(), BigInt('0x' + payeeKey.publicKey.toString('hex')));
            assert.equal(s.readNumber(), CLOSE_DELAY);
            assert.equal(s.readNumber(), 7);
            const op = (await bc.runGetMethod(addr, 'get_voucher_op')).stackReader.readNumber();
            assert.equal(op, kind.voucherOp);
        });

        it('top-up by anyone adds exactly the amount; too little value is rejected', async () => {
            await deploy(toNano('10'));
            h.assertOk(await sendFrom(stranger, h.topUpBody(toNano('2.5')), toNano('2.5') + h.TOPUP_FEE), addr);
            assert.equal((await state()).balance, toNano('12.5'));
            h.assertExit(await sendFrom(stranger, h.topUpBody(toNano('1')), toNano('1') + h.TOPUP_FEE - 1n), addr, ERR.INSUFFICIENT_VALUE);
            assert.equal((await state()).balance, toNano('12.5'));
        });

        it('voucher moves exactly the delta to the payee, and the attached value back', async () => {
            await deploy(toNano('10'));
            const r = await submit(1, toNano('1.25'));
            h.assertOk(r, addr);
            assert.equal(h.outMessages(r, addr).length, 2);
            assertExcessTo(r, stranger, 1);
            const out = payouts(r);
            assert.equal(out.length, 1);
            assert.ok(out[0].to.equals(payee));
            assert.equal(out[0].value, toNano('1.25'));
            const b = out[0].body.beginParse();
            assert.equal(b.loadUint(32), OP.PAYOUT);
            assert.equal(b.loadUintBig(64), 1n);
            assert.equal(b.loadUintBig(64), 1n);
            assert.equal(b.loadCoins(), toNano('1.25'));
            h.assertOk(r, payee);
            assert.deepEqual(await state(), { state: 0, balance: toNano('8.75'), charged: toNano('1.25'), seqno: 1n, closeAt: 0 });
        });

        it('rejects a bad signature (wrong key, tampered payload)', async () => {
            await deploy();
            h.assertExit(await submit(1, toNano('1'), { key: otherKey }), addr, ERR.BAD_SIGNATURE);
            // valid signature over cumulative 1 TON, payload swapped for 5 TON
            const good = voucher(1, toNano('1'));
            const s = good.beginParse();
            const tampered = h.beginCell().storeUint(s.loadUint(32), 32).storeUint(s.loadUintBig(64), 64).storeBuffer(s.loadBuffer(64))
                .storeRef(h.voucherPayload(kind.voucherOp, addr, 1, toNano('5'))).endCell();
            h.assertExit(await sendFrom(stranger, tampered), addr, ERR.BAD_SIGNATURE);
            assert.equal((await state()).charged, 0n);
        });

        it('rejects replayed / non-newer seqno and decreasing amounts', async () => {
            await deploy();
            h.assertOk(await submit(5, toNano('1')), addr);
            h.assertExit(await submit(5, toNano('1')), addr, ERR.REPLAY);
            h.assertExit(await submit(5, toNano('2')), addr, ERR.REPLAY);
            h.assertExit(await submit(4, toNano('3')), addr, ERR.REPLAY);
            h.assertExit(await submit(6, toNano('0.5')), addr, ERR.AMOUNT_DECREASED);
            // same cumulative, newer seqno: accepted, nothing paid (the attached value returns)
            const r = await submit(6, toNano('1'));
            h.assertOk(r, addr);
            assert.equal(payouts(r).length, 0);
            assertExcessTo(r, stranger, 6);
            assert.deepEqual(await state(), { state: 0, balance: toNano('9'), charged: toNano('1'), seqno: 6n, closeAt: 0 });
        });

        it('rejects a voucher for another channel or of another kind', async () => {
            await deploy();
            const other = h.contractAddress(0, { code, data: h.channelData({ funder, payee, signerPubkey: signerKey.publicKey, payeePubkey: payeeKey.publicKey, closeDelay: CLOSE_DELAY, channelId: 8 }) });
            h.assertExit(await submit(1, toNano('1'), { channel: other }), addr, ERR.WRONG_CHANNEL);
            h.assertExit(await submit(1, toNano('1'), { payloadOp: kind.otherOp }), addr, ERR.WRONG_VOUCHER_KIND);
            h.assertExit(await submit(1, toNano('1'), { outerOp: kind.otherOp, payloadOp: kind.otherOp }), addr, ERR.UNKNOWN_OP);
        });

        it('rejects a charge above the balance; the exact balance is accepted', async () => {
            await deploy(toNano('3'));
            h.assertOk(await submit(1, toNano('1')), addr);
            h.assertExit(await submit(2, toNano('3') + 1n), addr, ERR.INSUFFICIENT_BALANCE);
            const r = await submit(2, toNano('3'));
            h.assertOk(r, addr);
            assert.equal(h.outMessages(r, addr)[0].value, toNano('2'));
            assert.deepEqual(await state(), { state: 0, balance: 0n, charged: toNano('3'), seqno: 2n, closeAt: 0 });
        });

        it('close/withdraw are funder-only; early close and wrong states rejected', async () => {
            await deploy();
            h.assertExit(await sendFrom(payee, h.simpleBody(OP.REQUEST_CLOSE)), addr, ERR.WRONG_SENDER);
            h.assertExit(await sendFrom(stranger, h.simpleBody(OP.REQUEST_CLOSE)), addr, ERR.WRONG_SENDER);
            h.assertExit(await sendFrom(funder, h.simpleBody(OP.FINALIZE_CLOSE)), addr, ERR.WRONG_STATE);
            h.assertExit(await sendFrom(funder, h.simpleBody(OP.WITHDRAW)), addr, ERR.WRONG_STATE);
            h.assertOk(await sendFrom(funder, h.simpleBody(OP.REQUEST_CLOSE)), addr);
            h.assertExit(await sendFrom(funder, h.simpleBody(OP.REQUEST_CLOSE)), addr, ERR.WRONG_STATE);
            h.assertExit(await sendFrom(funder, h.simpleBody(OP.FINALIZE_CLOSE)), addr, ERR.EARLY_CLOSE);
            h.assertExit(await sendFrom(stranger, h.simpleBody(OP.FINALIZE_CLOSE)), addr, ERR.WRONG_SENDER);
            h.assertExit(await sendFrom(stranger, h.simpleBody(OP.PAYEE_CLOSE)), addr, ERR.WRONG_SENDER);
            h.assertExit(await sendFrom(funder, h.simpleBody(OP.PAYEE_CLOSE)), addr, ERR.WRONG_SENDER);
        });

        it('unknown op rejected, plain transfer accepted without credit', async () => {
            await deploy(toNano('1'));
            h.assertExit(await sendFrom(stranger, h.simpleBody(0x12345678)), addr, ERR.UNKNOWN_OP);
            h.assertOk(await sendFrom(stranger, h.beginCell().endCell(), toNano('1')), addr);
            assert.equal((await state()).balance, toNano('1'));
        });

        it('redeeming keeps none of the redeemer\'s value: the funder withdraws no more than it paid in', async () => {
            // issue 10, finding 2: each voucher message left its 0.05 TON in the channel, and withdraw
            // handed it to the funder (10 TON deposited, 10.29 TON withdrawn)
            await deploy(toNano('10'));
            const start = await h.balanceOf(bc, addr);
            let charged = 0n;
            for (let i = 1; i <= 4; i++) {
                charged += 6n;
                h.assertOk(await submit(i, charged, { from: payee }), addr);
            }
            const after = await h.balanceOf(bc, addr);
            assert.ok(after <= start - charged, `channel account grew: ${start} -> ${after}`);
            bc.now = bc.now + 1;
            h.assertOk(await sendFrom(payee, h.simpleBody(OP.PAYEE_CLOSE)), addr);
            const w = await sendFrom(funder, h.simpleBody(OP.WITHDRAW, 1));
            const refund = h.outMessages(w, addr)[0].value;
            assert.ok(refund < toNano('10') + h.TOPUP_FEE + toNano('0.05'), `refund ${refund}`);
            assert.ok(refund + charged <= toNano('10') + h.TOPUP_FEE + toNano('0.05'));
        });

        it('payee close is immediate; funder then withdraws', async () => {
            await deploy(toNano('4'));
            h.assertOk(await submit(1, toNano('1')), addr);
            h.assertOk(await sendFrom(payee, h.simpleBody(OP.PAYEE_CLOSE)), addr);
            const st = await state();
            assert.equal(st.state, 2);
            h.assertExit(await submit(2, toNano('2')), addr, ERR.WRONG_STATE);
            const r = await sendFrom(funder, h.simpleBody(OP.WITHDRAW, 9));
            h.assertOk(r, addr);
            const out = h.outMessages(r, addr);
            assert.equal(out.length, 1);
            assert.ok(out[0].to.equals(funder));
            assert.ok(out[0].value >= toNano('3'));
            assert.equal(await h.balanceOf(bc, addr), 0n);
        });

        it('full lifecycle: deploy, deposits, vouchers, replay, close delay, withdraw', async () => {
            const T0 = bc.now;
            await deploy(toNano('10'));
            h.assertOk(await sendFrom(stranger, h.topUpBody(toNano('5')), toNano('5') + h.TOPUP_FEE), addr);
            let paid = 0n;
            const steps = [[1, '0.3'], [2, '1.000000001'], [3, '2.5'], [7, '4.2']];
            let prev = 0n;
            for (const [seqno, cum] of steps) {
                const r = await submit(seqno, toNano(cum));
                h.assertOk(r, addr);
                const out = payouts(r);
                assert.equal(out.length, 1);
                assert.equal(out[0].value, toNano(cum) - prev);   // exact to the nanoTON
                paid += out[0].value;
                prev = toNano(cum);
            }
            assert.equal(paid, toNano('4.2'));
            h.assertExit(await submit(7, toNano('9')), addr, ERR.REPLAY);
            h.assertExit(await submit(3, toNano('9')), addr, ERR.REPLAY);
            assert.deepEqual(await state(), { state: 0, balance: toNano('10.8'), charged: toNano('4.2'), seqno: 7n, closeAt: 0 });

            bc.now = T0 + 100;
            h.assertOk(await sendFrom(funder, h.simpleBody(OP.REQUEST_CLOSE)), addr);
            assert.deepEqual(await state(), { state: 1, balance: toNano('10.8'), charged: toNano('4.2'), seqno: 7n, closeAt: T0 + 100 + CLOSE_DELAY });
            h.assertExit(await sendFrom(stranger, h.topUpBody(toNano('1')), toNano('2')), addr, ERR.WRONG_STATE);

            // the payee can still redeem during the close delay
            bc.now = T0 + 100 + CLOSE_DELAY - 1;
            const r = await submit(8, toNano('5'));
            h.assertOk(r, addr);
            assert.equal(payouts(r)[0].value, toNano('0.8'));
            paid += toNano('0.8');
            h.assertExit(await sendFrom(funder, h.simpleBody(OP.FINALIZE_CLOSE)), addr, ERR.EARLY_CLOSE);
            h.assertExit(await sendFrom(funder, h.simpleBody(OP.WITHDRAW)), addr, ERR.WRONG_STATE);

            bc.now = T0 + 100 + CLOSE_DELAY;
            h.assertExit(await sendFrom(payee, h.simpleBody(OP.FINALIZE_CLOSE)), addr, ERR.WRONG_SENDER);
            h.assertOk(await sendFrom(funder, h.simpleBody(OP.FINALIZE_CLOSE)), addr);
            assert.equal((await state()).state, 2);
            h.assertExit(await submit(9, toNano('6')), addr, ERR.WRONG_STATE);
            h.assertExit(await sendFrom(payee, h.simpleBody(OP.WITHDRAW)), addr, ERR.WRONG_SENDER);

            const before = await state();
            assert.equal(before.balance, toNano('10'));
            assert.equal(paid + before.balance, toNano('15'));   // deposits == paid + remaining
            const accountBefore = await h.balanceOf(bc, addr);
            const wr = await sendFrom(funder, h.simpleBody(OP.WITHDRAW, 42));
            const wtx = h.assertOk(wr, addr);
            const out = h.outMessages(wr, addr);
            assert.equal(out.length, 1);
            assert.ok(out[0].to.equals(funder));
            const body = out[0].body.beginParse();
            assert.equal(body.loadUint(32), OP.REFUND);
            assert.equal(body.loadUintBig(64), 42n);
            // the refund carries the whole account: tracked balance + unspent reserve (top-up fees and the
            // value attached to accepted non-voucher messages), minus this transaction's fees -- exact to the nanoTON
            assert.ok(out[0].value >= toNano('10'), `refund ${out[0].value}`);
            assert.equal(out[0].value + out[0].fwdFee + wtx.totalFees.coins, accountBefore + toNano('0.05'));
            assert.equal(await h.balanceOf(bc, addr), 0n);
            assert.deepEqual(await state(), { state: 2, balance: 0n, charged: toNano('5'), seqno: 8n, closeAt: T0 + 100 + CLOSE_DELAY });
        });
    });
}

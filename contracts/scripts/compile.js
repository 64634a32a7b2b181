#!/usr/bin/env node
// Compile the Cocoon Tolk contracts with the pinned @ton/tolk-js.
//   node scripts/compile.js          -> (re)write build/<name>.json
//   node scripts/compile.js --check  -> recompile and exit 1 if any committed
//                                      build/<name>.json differs (code or hash)
'use strict';
const fs = require('fs');
const path = require('path');
const { runTolkCompiler, getTolkCompilerVersion } = require('@ton/tolk-js');
const { Cell } = require('@ton/core');

const ROOT = path.resolve(__dirname, '..');
const SRC = path.join(ROOT, 'src');
const BUILD = path.join(ROOT, 'build');
const CONTRACTS = ['client_channel', 'worker_channel', 'root_registry', 'proxy_stake'];

async function compileOne(name) {
    const res = await runTolkCompiler({
        entrypointFileName: `${name}.tolk`,
        fsReadCallback: (p) => fs.readFileSync(path.join(SRC, p), 'utf-8'),
    });
    if (res.status !== 'ok') {
        throw new Error(`${name}: compilation failed:\n${res.message}`);
    }
    // cross-check the compiler-reported hash against @ton/core's cell hash
    const cell = Cell.fromBoc(Buffer.from(res.codeBoc64, 'base64'))[0];
    const coreHash = cell.hash().toString('hex');
    if (coreHash !== res.codeHashHex.toLowerCase()) {
        throw new Error(`${name}: hash mismatch tolk=${res.codeHashHex} core=${coreHash}`);
    }
    return {
        name,
        tolkVersion: res.tolkVersion,
        codeHashHex: coreHash,
        codeHashBase64: cell.hash().toString('base64'),
        codeBoc64: res.codeBoc64,
    };
}

async function main() {
    const check = process.argv.includes('--check');
    console.log(`Tolk ${await getTolkCompilerVersion()}`);
    let failed = false;
    for (const name of CONTRACTS) {
        const out = await compileOne(name);
        const file = path.join(BUILD, `${name}.json`);
        const text = JSON.stringify(out, null, 2) + '\n';
        if (check) {
            if (!fs.existsSync(file)) {
                console.error(`FAIL ${name}: ${path.relative(ROOT, file)} is missing (run: npm run build)`);
                failed = true;
                continue;
            }
            const committed = JSON.parse(fs.readFileSync(file, 'utf-8'));
            if (committed.codeHashHex !== out.codeHashHex || committed.codeBoc64 !== out.codeBoc64) {
                console.error(`FAIL ${name}: committed hash ${committed.codeHashHex} != recompiled ${out.codeHashHex}`);
                failed = true;
            } else {
                console.log(`ok   ${name} ${out.codeHashHex}`);
            }
        } else {
            fs.mkdirSync(BUILD, { recursive: true });
            fs.writeFileSync(file, text);
            console.log(`wrote ${path.relative(ROOT, file)} ${out.codeHashHex}`);
        }
    }
    if (failed) {
        console.error('Compiled code differs from contracts/build/*.json: run `npm run build` and commit the result.');
        process.exit(1);
    }
}

main().catch((e) => {
    console.error(e && e.stack ? e.stack : String(e));
    process.exit(2);
});

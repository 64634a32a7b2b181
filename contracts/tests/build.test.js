'use strict';
// The committed build/*.json must match a fresh compile of src/ (same check as `npm run check-hashes`).
const { it } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('child_process');
const path = require('path');

it('committed build/*.json matches a fresh compile', () => {
    const out = execFileSync(process.execPath, [path.join(__dirname, '..', 'scripts', 'compile.js'), '--check'], { encoding: 'utf-8' });
    assert.match(out, /ok {3}client_channel/);
    assert.match(out, /ok {3}worker_channel/);
    assert.match(out, /ok {3}root_registry/);
    assert.match(out, /ok {3}proxy_stake/);
});

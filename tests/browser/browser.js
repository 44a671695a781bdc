// Shared by every scenario: launches Debian's Chromium (never a downloaded
// one: the machines that run these tests have no way out), gives the
// scenario a fresh page, and prints exactly one JSON line on stdout, which
// the Rust side (tests/api/browser.rs) reads:
//   {"ok":true, ...what the scenario returned}  or  {"ok":false,"error":"..."}
//
// A scenario is a file that calls `run(async (page, input) => ({...}))`;
// `input` is the JSON object the test passed as the first argument.
'use strict';

const { chromium } = require('playwright-core');

// The flags a headless Chromium needs on a CI machine without a display,
// a sandbox-capable kernel setup or network access.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function input() {
  const raw = process.argv[2];
  return raw ? JSON.parse(raw) : {};
}

function report(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
}

async function run(scenario) {
  let browser;
  try {
    const given = input();
    browser = await chromium.launch({
      executablePath: process.env.CONNECTIONS_CHROMIUM || '/usr/bin/chromium',
      args: ARGS,
      headless: true,
    });
    const page = await browser.newPage();
    page.setDefaultTimeout(given.timeout_ms || 20000);
    const result = await scenario(page, given);
    report({ ok: true, ...result });
  } catch (err) {
    report({ ok: false, error: String((err && err.stack) || err) });
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
}

module.exports = { run };

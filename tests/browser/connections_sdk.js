// The browser SDK end to end (tests/api/browser_sdk.rs): opens each demo
// page (served from another origin than the API), waits until the page's
// removeConnection callback has run, and reports what the page recorded in
// `window.seen` (the callback's response, whether its context was the very
// object passed, and the onConnectionRemoved events), one page after the
// other so that the test knows the order of the removals.
'use strict';

const { run } = require('./browser');

run(async (page, input) => {
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  const seen = {};
  for (const name of ['own', 'other_uid', 'stranger']) {
    await page.goto(input[name]);
    await page.waitForFunction(() => window.seen && window.seen.response !== null);
    seen[name] = await page.evaluate(() => JSON.parse(JSON.stringify(window.seen)));
  }
  if (pageErrors.length > 0) {
    throw new Error(`uncaught errors in the page: ${pageErrors.join('; ')}`);
  }
  return seen;
});

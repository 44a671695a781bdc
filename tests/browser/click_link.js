// Open the page at `input.url`, click the element `input.selector` (a link),
// wait until the browser is on a page whose URL starts with
// `input.lands_on`, and report where it landed and that page's `#message`.
'use strict';

const { run } = require('./browser');

run(async (page, { url, selector, lands_on }) => {
  await page.goto(url);
  await Promise.all([
    page.waitForURL((landed) => landed.href.startsWith(lands_on)),
    page.click(selector),
  ]);
  return {
    url: page.url(),
    message: await page.textContent('#message'),
  };
});

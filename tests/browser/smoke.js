// The harness's own check: load `input.url` and report the page's title
// and the text of its `#message` element.
'use strict';

const { run } = require('./browser');

run(async (page, { url }) => {
  await page.goto(url);
  return {
    title: await page.title(),
    message: await page.textContent('#message'),
  };
});

// Unit tests of the built library (dist/connections.js, the file the service
// serves): it runs in a fresh VM context that plays the page, with a fake
// `document.currentScript` and a fake `fetch` that records the requests.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

const SCRIPT = fs.readFileSync(path.join(__dirname, '..', 'dist', 'connections.js'), 'utf8');

/** A page that loaded the script from `src`; `fetch` answers the requests. */
function page(fetch, src = 'https://api.example.test/base/sdk/connections.js?apiKey=3_site') {
  const uncaught = [];
  const context = vm.createContext({
    document: { currentScript: { src } },
    fetch,
    URL,
    URLSearchParams,
    console,
    // The page's uncaught errors (a throwing callback) are collected here.
    setTimeout: (f) => {
      try {
        f();
      } catch (err) {
        uncaught.push(err);
      }
    },
  });
  vm.runInContext(SCRIPT, context);
  return { connections: context.connections, uncaught };
}

/** A fetch that answers `body` as JSON and records each request. */
function answering(body) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url, init });
    return { json: async () => JSON.parse(JSON.stringify(body)) };
  };
  return { fetch, requests };
}

const USER = {
  apiKey: '3_site',
  uid: 'u1',
  loginIds: [{ loginId: 'a@example.com', hasPassword: true }],
  identities: [],
  loginMethods: 1,
  createdAt: '2026-11-28T00:00:00.000Z',
  updatedAt: '2026-11-28T00:00:00.000Z',
};

const SUCCESS = {
  callId: 'c1',
  errorCode: 0,
  statusCode: 200,
  statusReason: 'OK',
  time: '2026-11-28T00:00:00.000Z',
  apiVersion: 2,
  removed: [
    {
      provider: 'facebook',
      providerUid: 'fb-1',
      mode: 'REMOVAL_MODE_HARD',
      providerLogoutRequested: true,
      eventId: 'e1',
    },
    {
      provider: 'saml-corp',
      providerUid: 's-1',
      mode: 'REMOVAL_MODE_HARD',
      providerLogoutRequested: true,
      eventId: 'e2',
    },
  ],
  user: USER,
};

/** A callback and the Promise of its one call. */
function waiting() {
  let resolve;
  const called = new Promise((r) => (resolve = r));
  return { callback: (response) => resolve(response), called };
}

test('the script learns the API base URL and the site from its own URL', async () => {
  const { fetch, requests } = answering(SUCCESS);
  const { connections } = page(fetch);
  connections.setUserToken('cnx_token');
  await connections.socialize.removeConnection({ provider: 'facebook' });
  assert.equal(requests.length, 1);
  assert.equal(
    requests[0].url,
    'https://api.example.test/base/socialize.removeConnection?apiKey=3_site',
  );
  const { init } = requests[0];
  assert.equal(init.method, 'POST');
  assert.equal(init.credentials, 'omit');
  assert.equal(init.headers.Authorization, 'Bearer cnx_token');
  assert.equal(init.headers['Content-Type'], 'application/x-www-form-urlencoded');
});

test('the seed parameters are sent by their REST names; context stays in the page', async () => {
  const { fetch, requests } = answering(SUCCESS);
  const { connections } = page(fetch);
  const context = { widget: 'profile', at: new Date(0) };
  await connections.socialize.removeConnection({
    provider: 'facebook',
    cid: 'profile-page',
    removeLoginID: true,
    lastIdentityHandling: 'fail',
    forceProvidersLogout: false,
    context,
    userToken: 'cnx_per_call',
  });
  const form = new URLSearchParams(requests[0].init.body);
  assert.equal(form.get('provider'), 'facebook');
  assert.equal(form.get('cid'), 'profile-page');
  assert.equal(form.get('removeLoginID'), 'true');
  assert.equal(form.get('lastIdentityHandling'), 'fail');
  assert.equal(form.get('forceProvidersLogout'), 'false');
  assert.equal(form.get('format'), 'json');
  assert.equal(form.has('context'), false);
  assert.equal(form.has('UID'), false);
  assert.equal(form.has('userToken'), false);
  assert.equal(requests[0].init.headers.Authorization, 'Bearer cnx_per_call');
});

test('the callback gets the response members and the same context object', async () => {
  const { fetch } = answering(SUCCESS);
  const { connections } = page(fetch);
  const context = { mine: true };
  const { callback, called } = waiting();
  const returned = connections.socialize.removeConnection({ provider: 'facebook', context, callback });
  assert.equal(returned, undefined);
  const response = await called;
  assert.equal(response.errorCode, 0);
  assert.equal(response.callId, 'c1');
  assert.equal(response.statusCode, 200);
  assert.equal(response.operation, 'socialize.removeConnection');
  assert.equal(response.context, context);
  assert.equal(response.user.uid, 'u1');
  assert.equal(response.removed.length, 2);
});

test('without a callback removeConnection returns a Promise of the response', async () => {
  const { fetch } = answering(SUCCESS);
  const { connections } = page(fetch);
  const response = await connections.socialize.removeConnection({});
  assert.equal(response.errorCode, 0);
  assert.equal(response.context, null);
});

test('onConnectionRemoved fires once per removed identity with the safe fields', async () => {
  const { fetch } = answering(SUCCESS);
  const { connections } = page(fetch);
  const events = [];
  connections.socialize.addEventHandlers({ onConnectionRemoved: (e) => events.push(e) });
  const context = { n: 1 };
  await connections.socialize.removeConnection({ context });
  assert.deepEqual(
    events.map((e) => [e.eventName, e.provider, e.mode, e.providerLogoutRequested]),
    [
      ['connectionRemoved', 'facebook', 'REMOVAL_MODE_HARD', true],
      ['connectionRemoved', 'saml-corp', 'REMOVAL_MODE_HARD', true],
    ],
  );
  assert.equal(events[0].context, context);
  assert.equal(events[0].user.uid, 'u1');
  assert.equal('providerUid' in events[0], false);
  assert.equal('eventId' in events[0], false);
});

test('no event for a failure or a dry run; removed handlers stay quiet', async () => {
  const refused = {
    callId: 'c2',
    errorCode: 403007,
    statusCode: 403,
    errorMessage: 'Permission denied',
    errorDetails: 'this user token may act only on its own account',
    reason: 'PERMISSION_DENIED',
    time: '2026-11-28T00:00:00.000Z',
  };
  const events = [];
  const handlers = { onConnectionRemoved: (e) => events.push(e) };
  const failing = page(answering(refused).fetch).connections;
  failing.socialize.addEventHandlers(handlers);
  const response = await failing.socialize.removeConnection({ UID: 'other' });
  assert.equal(response.errorCode, 403007);
  assert.equal(response.reason, 'PERMISSION_DENIED');
  const dry = page(answering({ ...SUCCESS, dryRun: true }).fetch).connections;
  dry.socialize.addEventHandlers(handlers);
  await dry.socialize.removeConnection({});
  const quiet = page(answering(SUCCESS).fetch).connections;
  quiet.socialize.addEventHandlers(handlers);
  quiet.socialize.removeEventHandlers(handlers);
  await quiet.socialize.removeConnection({});
  assert.equal(events.length, 0);
});

test('a network failure reaches the callback as errorCode 500026, never as an exception', async () => {
  const { connections, uncaught } = page(async () => {
    throw new TypeError('Failed to fetch');
  });
  const context = { retry: 1 };
  const { callback, called } = waiting();
  connections.socialize.removeConnection({ context, callback });
  const response = await called;
  assert.equal(response.errorCode, connections.NETWORK_ERROR_CODE);
  assert.equal(response.errorCode, 500026);
  assert.equal(response.statusCode, 500);
  assert.match(response.errorDetails, /Failed to fetch/);
  assert.equal(response.context, context);
  assert.equal(uncaught.length, 0);
  const promised = await connections.socialize.removeConnection({});
  assert.equal(promised.errorCode, 500026);
});

test('an answer that is not the service JSON is errorCode 500001', async () => {
  const { connections } = page(async () => ({
    json: async () => {
      throw new SyntaxError('Unexpected token <');
    },
  }));
  assert.equal((await connections.socialize.removeConnection({})).errorCode, 500001);
  const other = page(async () => ({ json: async () => ({ hello: 'world' }) })).connections;
  assert.equal((await other.socialize.removeConnection({})).errorCode, 500001);
});

test('a throwing callback or handler is reported as the page error and spares the others', async () => {
  const { connections, uncaught } = page(answering(SUCCESS).fetch);
  const seen = [];
  connections.socialize.addEventHandlers({
    onConnectionRemoved: () => {
      throw new Error('handler bug');
    },
  });
  connections.socialize.addEventHandlers({ onConnectionRemoved: (e) => seen.push(e.provider) });
  const response = await connections.socialize.removeConnection({});
  assert.equal(response.errorCode, 0);
  assert.deepEqual(seen, ['facebook', 'saml-corp']);
  assert.equal(uncaught.length, 2);
  assert.match(String(uncaught[0]), /handler bug/);
});

test('init overrides what the script read from its URL', async () => {
  const { fetch, requests } = answering(SUCCESS);
  const { connections } = page(fetch, '');
  connections.init({ apiKey: '3_other', baseUrl: 'http://127.0.0.1:8080/' });
  await connections.socialize.removeConnection({});
  assert.equal(requests[0].url, 'http://127.0.0.1:8080/socialize.removeConnection?apiKey=3_other');
});

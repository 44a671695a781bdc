/*! connections browser SDK: connections.socialize.removeConnection and onConnectionRemoved. */
// Loaded by `<script src="https://API/sdk/connections.js?apiKey=SITE">`: the
// script learns the API's base URL and the site from its own URL, and
// defines the global `connections`. It calls the service's REST endpoint
// (`POST /socialize.removeConnection`) cross-origin, with the user token the
// site's backend minted for the logged-in user in `Authorization: Bearer`;
// the service answers only pages of the site's allowed browser origins.
//
// Every outcome reaches the caller as a response object with an `errorCode`
// (0 on success): failures of the network, or answers that are not the
// service's JSON, become errorCode NETWORK_ERROR_CODE / SERVER_ERROR_CODE.
// Nothing is thrown at the page.

/** The seed's parameters of socialize.removeConnection. */
export interface RemoveConnectionParams {
  /** One provider (`facebook`, `saml-<name>`, ...); absent: every provider. */
  provider?: string;
  /** Context id for reports, at most 100 characters. */
  cid?: string;
  /** Also remove the login ID the identity brought. Default false. */
  removeLoginID?: boolean;
  /** `soft` (default), `remove` or `fail`. */
  lastIdentityHandling?: 'soft' | 'remove' | 'fail';
  /** Ask downstream services to log the user out of the provider. Default true. */
  forceProvidersLogout?: boolean;
  /** Handed back unchanged (the same object) in the response and the events. */
  context?: unknown;
  /** Called once with the response; without it, the call returns a Promise. */
  callback?: (response: RemoveConnectionResponse) => void;
  /** The user token for this call (else the one given to setUserToken). */
  userToken?: string;
  /** The account; default: the user token's own uid. */
  UID?: string;
}

/** What the callback (or the Promise) receives. */
export interface RemoveConnectionResponse {
  operation: 'socialize.removeConnection';
  /** 0 on success. */
  errorCode: number;
  errorMessage?: string;
  errorDetails?: string;
  /** The service's reason (e.g. NOT_CONNECTED) when it refused. */
  reason?: string;
  statusCode: number;
  statusReason?: string;
  /** The service's call id; empty when the service was not reached. */
  callId: string;
  time: string;
  /** The `context` parameter, unchanged; null when none was given. */
  context: unknown;
  /** The account after the change, as GetAccount shows it (no secrets). */
  user?: Account;
  /** One entry per removed identity. */
  removed?: RemovedIdentity[];
}

export interface Account {
  apiKey: string;
  uid: string;
  loginIds: { loginId: string; hasPassword: boolean }[];
  identities: {
    provider: string;
    subProvider?: string;
    providerUid: string;
    loginId?: string;
    state: string;
    hasSession: boolean;
    linkedAt: string;
    updatedAt: string;
  }[];
  loginMethods: number;
  createdAt: string;
  updatedAt: string;
}

export interface RemovedIdentity {
  provider: string;
  subProvider?: string;
  providerUid: string;
  mode: string;
  removedLoginIds?: string[];
  providerLogoutRequested: boolean;
  eventId?: string;
}

/** The onConnectionRemoved event: one per removed identity. */
export interface ConnectionRemovedEvent {
  eventName: 'connectionRemoved';
  source: 'socialize';
  provider: string;
  subProvider?: string;
  /** REMOVAL_MODE_HARD or REMOVAL_MODE_SOFT. */
  mode: string;
  providerLogoutRequested: boolean;
  /** The account after the change. */
  user?: Account;
  context: unknown;
}

export interface EventHandlers {
  onConnectionRemoved?: (event: ConnectionRemovedEvent) => void;
}

/** The service could not be reached, or the browser refused the answer
 * (e.g. the page's origin is not allowed): Gigya's "network error". */
export const NETWORK_ERROR_CODE = 500026;
/** The service answered something that is not its JSON response. */
export const SERVER_ERROR_CODE = 500001;

const REMOVE_CONNECTION = 'socialize.removeConnection';

/** Where the API is and which site this page belongs to. */
interface Config {
  baseUrl: string;
  apiKey: string;
}

/** Reads the base URL and the apiKey from the script's own URL. */
function configFromScript(): Config {
  const script =
    typeof document !== 'undefined' ? (document.currentScript as HTMLScriptElement | null) : null;
  if (!script || !script.src) {
    return { baseUrl: '', apiKey: '' };
  }
  const url = new URL(script.src);
  const path = url.pathname.replace(/\/sdk\/connections\.js$/, '');
  return { baseUrl: url.origin + path, apiKey: url.searchParams.get('apiKey') || '' };
}

const config: Config = configFromScript();
let userToken = '';
const handlers: EventHandlers[] = [];

function failure(
  errorCode: number,
  errorMessage: string,
  errorDetails: string,
  context: unknown,
): RemoveConnectionResponse {
  return {
    operation: REMOVE_CONNECTION,
    errorCode,
    errorMessage,
    errorDetails,
    statusCode: 500,
    statusReason: 'Internal Server Error',
    callId: '',
    time: new Date().toISOString(),
    context,
  };
}

/** Runs page code so that its exceptions are reported like any other
 * uncaught error of the page, without breaking this call. */
function guarded(f: () => void): void {
  try {
    f();
  } catch (err) {
    setTimeout(() => {
      throw err;
    }, 0);
  }
}

function formBody(params: RemoveConnectionParams): string {
  const form = new URLSearchParams();
  const put = (name: string, value: string | boolean | undefined) => {
    if (value !== undefined && value !== null) form.append(name, String(value));
  };
  put('UID', params.UID);
  put('provider', params.provider);
  put('cid', params.cid);
  put('removeLoginID', params.removeLoginID);
  put('lastIdentityHandling', params.lastIdentityHandling);
  put('forceProvidersLogout', params.forceProvidersLogout);
  put('format', 'json');
  put('sdk', 'js_connections');
  return form.toString();
}

async function call(params: RemoveConnectionParams): Promise<RemoveConnectionResponse> {
  const context = params.context === undefined ? null : params.context;
  // apiKey in the query string: the CORS preflight carries no body, and the
  // service decides which origins may call by the site.
  const url = `${config.baseUrl}/${REMOVE_CONNECTION}?apiKey=${encodeURIComponent(config.apiKey)}`;
  const headers: Record<string, string> = {
    'Content-Type': 'application/x-www-form-urlencoded',
  };
  const token = params.userToken || userToken;
  if (token) headers.Authorization = `Bearer ${token}`;
  let reply: Response;
  try {
    reply = await fetch(url, {
      method: 'POST',
      headers,
      body: formBody(params),
      mode: 'cors',
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (err) {
    return failure(NETWORK_ERROR_CODE, 'Network error', String(err), context);
  }
  let body: Record<string, unknown>;
  try {
    body = await reply.json();
  } catch (err) {
    return failure(SERVER_ERROR_CODE, 'General Server Error', String(err), context);
  }
  if (!body || typeof body !== 'object' || typeof body.errorCode !== 'number') {
    return failure(SERVER_ERROR_CODE, 'General Server Error', 'not a response', context);
  }
  // The page's own context object, not the service's copy of it.
  return { ...(body as unknown as RemoveConnectionResponse), operation: REMOVE_CONNECTION, context };
}

/** Fires onConnectionRemoved once per removed identity of a real change. */
function fireRemoved(response: RemoveConnectionResponse): void {
  if (response.errorCode !== 0 || !response.removed || (response as { dryRun?: boolean }).dryRun) {
    return;
  }
  for (const removed of response.removed) {
    const event: ConnectionRemovedEvent = {
      eventName: 'connectionRemoved',
      source: 'socialize',
      provider: removed.provider,
      mode: removed.mode,
      providerLogoutRequested: removed.providerLogoutRequested,
      user: response.user,
      context: response.context,
    };
    if (removed.subProvider) event.subProvider = removed.subProvider;
    for (const registered of handlers.slice()) {
      const handler = registered.onConnectionRemoved;
      if (typeof handler === 'function') guarded(() => handler(event));
    }
  }
}

/** socialize.removeConnection: a callback, or a Promise without one. The
 * Promise never rejects: failures are responses with an errorCode. */
function removeConnection(params?: RemoveConnectionParams): Promise<RemoveConnectionResponse> | void {
  const given: RemoveConnectionParams = params || {};
  const done = call(given)
    .catch((err) => failure(SERVER_ERROR_CODE, 'General Server Error', String(err), given.context ?? null))
    .then((response) => {
      fireRemoved(response);
      return response;
    });
  const callback = given.callback;
  if (typeof callback !== 'function') return done;
  done.then((response) => guarded(() => callback(response)));
}

/** Registers handlers of global events (`onConnectionRemoved`). */
function addEventHandlers(added: EventHandlers): void {
  if (added && typeof added === 'object') handlers.push(added);
}

/** Unregisters handlers given to addEventHandlers (the same object). */
function removeEventHandlers(removed: EventHandlers): void {
  const at = handlers.indexOf(removed);
  if (at >= 0) handlers.splice(at, 1);
}

/** The user token the site's backend minted for the logged-in user. */
function setUserToken(token: string): void {
  userToken = typeof token === 'string' ? token : '';
}

/** Overrides what the script read from its own URL (pages that load it
 * another way). */
function init(options: { apiKey?: string; baseUrl?: string }): void {
  if (options.apiKey) config.apiKey = options.apiKey;
  if (options.baseUrl) config.baseUrl = options.baseUrl.replace(/\/+$/, '');
}

const api = {
  version: '0.1.0',
  NETWORK_ERROR_CODE,
  SERVER_ERROR_CODE,
  init,
  setUserToken,
  socialize: { removeConnection, addEventHandlers, removeEventHandlers },
};

(globalThis as unknown as { connections: typeof api }).connections = api;

"use strict";
(() => {
  var __defProp = Object.defineProperty;
  var __defProps = Object.defineProperties;
  var __getOwnPropDescs = Object.getOwnPropertyDescriptors;
  var __getOwnPropSymbols = Object.getOwnPropertySymbols;
  var __hasOwnProp = Object.prototype.hasOwnProperty;
  var __propIsEnum = Object.prototype.propertyIsEnumerable;
  var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
  var __spreadValues = (a, b) => {
    for (var prop in b || (b = {}))
      if (__hasOwnProp.call(b, prop))
        __defNormalProp(a, prop, b[prop]);
    if (__getOwnPropSymbols)
      for (var prop of __getOwnPropSymbols(b)) {
        if (__propIsEnum.call(b, prop))
          __defNormalProp(a, prop, b[prop]);
      }
    return a;
  };
  var __spreadProps = (a, b) => __defProps(a, __getOwnPropDescs(b));

  // src/connections.ts
  /*! connections browser SDK: connections.socialize.removeConnection and onConnectionRemoved. */
  var NETWORK_ERROR_CODE = 500026;
  var SERVER_ERROR_CODE = 500001;
  var REMOVE_CONNECTION = "socialize.removeConnection";
  function configFromScript() {
    const script = typeof document !== "undefined" ? document.currentScript : null;
    if (!script || !script.src) {
      return { baseUrl: "", apiKey: "" };
    }
    const url = new URL(script.src);
    const path = url.pathname.replace(/\/sdk\/connections\.js$/, "");
    return { baseUrl: url.origin + path, apiKey: url.searchParams.get("apiKey") || "" };
  }
  var config = configFromScript();
  var userToken = "";
  var handlers = [];
  function failure(errorCode, errorMessage, errorDetails, context) {
    return {
      operation: REMOVE_CONNECTION,
      errorCode,
      errorMessage,
      errorDetails,
      statusCode: 500,
      statusReason: "Internal Server Error",
      callId: "",
      time: (/* @__PURE__ */ new Date()).toISOString(),
      context
    };
  }
  function guarded(f) {
    try {
      f();
    } catch (err) {
      setTimeout(() => {
        throw err;
      }, 0);
    }
  }
  function formBody(params) {
    const form = new URLSearchParams();
    const put = (name, value) => {
      if (value !== void 0 && value !== null) form.append(name, String(value));
    };
    put("UID", params.UID);
    put("provider", params.provider);
    put("cid", params.cid);
    put("removeLoginID", params.removeLoginID);
    put("lastIdentityHandling", params.lastIdentityHandling);
    put("forceProvidersLogout", params.forceProvidersLogout);
    put("format", "json");
    put("sdk", "js_connections");
    return form.toString();
  }
  async function call(params) {
    const context = params.context === void 0 ? null : params.context;
    const url = `${config.baseUrl}/${REMOVE_CONNECTION}?apiKey=${encodeURIComponent(config.apiKey)}`;
    const headers = {
      "Content-Type": "application/x-www-form-urlencoded"
    };
    const token = params.userToken || userToken;
    if (token) headers.Authorization = `Bearer ${token}`;
    let reply;
    try {
      reply = await fetch(url, {
        method: "POST",
        headers,
        body: formBody(params),
        mode: "cors",
        credentials: "omit",
        cache: "no-store"
      });
    } catch (err) {
      return failure(NETWORK_ERROR_CODE, "Network error", String(err), context);
    }
    let body;
    try {
      body = await reply.json();
    } catch (err) {
      return failure(SERVER_ERROR_CODE, "General Server Error", String(err), context);
    }
    if (!body || typeof body !== "object" || typeof body.errorCode !== "number") {
      return failure(SERVER_ERROR_CODE, "General Server Error", "not a response", context);
    }
    return __spreadProps(__spreadValues({}, body), { operation: REMOVE_CONNECTION, context });
  }
  function fireRemoved(response) {
    if (response.errorCode !== 0 || !response.removed || response.dryRun) {
      return;
    }
    for (const removed of response.removed) {
      const event = {
        eventName: "connectionRemoved",
        source: "socialize",
        provider: removed.provider,
        mode: removed.mode,
        providerLogoutRequested: removed.providerLogoutRequested,
        user: response.user,
        context: response.context
      };
      if (removed.subProvider) event.subProvider = removed.subProvider;
      for (const registered of handlers.slice()) {
        const handler = registered.onConnectionRemoved;
        if (typeof handler === "function") guarded(() => handler(event));
      }
    }
  }
  function removeConnection(params) {
    const given = params || {};
    const done = call(given).catch((err) => {
      var _a;
      return failure(SERVER_ERROR_CODE, "General Server Error", String(err), (_a = given.context) != null ? _a : null);
    }).then((response) => {
      fireRemoved(response);
      return response;
    });
    const callback = given.callback;
    if (typeof callback !== "function") return done;
    done.then((response) => guarded(() => callback(response)));
  }
  function addEventHandlers(added) {
    if (added && typeof added === "object") handlers.push(added);
  }
  function removeEventHandlers(removed) {
    const at = handlers.indexOf(removed);
    if (at >= 0) handlers.splice(at, 1);
  }
  function setUserToken(token) {
    userToken = typeof token === "string" ? token : "";
  }
  function init(options) {
    if (options.apiKey) config.apiKey = options.apiKey;
    if (options.baseUrl) config.baseUrl = options.baseUrl.replace(/\/+$/, "");
  }
  var api = {
    version: "0.1.0",
    NETWORK_ERROR_CODE,
    SERVER_ERROR_CODE,
    init,
    setUserToken,
    socialize: { removeConnection, addEventHandlers, removeEventHandlers }
  };
  globalThis.connections = api;
})();

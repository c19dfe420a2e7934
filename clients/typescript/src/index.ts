/**
 * TypeScript client SDK for Steward's gRPC API, for Node: gRPC over HTTP/2 through
 * `@connectrpc/connect-node`. (Browsers: `@steward/client/web`, gRPC-Web.)
 *
 * The messages and service descriptors are generated from the protos with protoc-gen-es
 * (`buf generate`, see clients/README.md) into `src/gen/`; `Steward` adds one Connect client per
 * public service, the session's tokens kept fresh, retries of idempotent calls, and pagination:
 *
 * ```ts
 * const steward = new Steward("127.0.0.1:50051");
 * await steward.signIn("owner@example.com", "a long and unusual passphrase");
 * const { profile } = await steward.admin.getProfile({});
 * for await (const a of steward.administrators.list({ parent: profile!.organization!.name })) {
 *   console.log(a.email);
 * }
 * steward.close();
 * ```
 */

import { readFileSync } from "node:fs";
import type * as http2 from "node:http2";

import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { SessionOptions, StewardBase } from "./core.js";

export * from "./exports.js";

/** The environment variable `Steward.fromEnv` reads the API key from. */
export const API_KEY_VAR = "STEWARD_API_KEY";
/** The environment variable `Steward.fromEnv` reads the server from (as the CLI does). */
export const SERVER_VAR = "STEWARD_SERVER";
/** The environment variable `Steward.fromEnv` reads the PEM file of the CA to trust from. */
export const CA_FILE_VAR = "STEWARD_CA_FILE";
/** The server `Steward.fromEnv` uses when neither a target nor `STEWARD_SERVER` is given. */
export const DEFAULT_TARGET = "127.0.0.1:50051";

/** Options of a Node `Steward` connection. */
export interface StewardOptions extends SessionOptions {
  /**
   * TLS: implied by an `https://` target or by `rootCerts`. `false` forbids TLS (an error with
   * `https://` or `rootCerts`).
   */
  tls?: boolean;
  /** PEM of the CA(s) to trust over TLS; unset: Node's default roots. Implies TLS. */
  rootCerts?: Buffer | string;
  /** More options of Node's `http2.connect` (e.g. `key` and `cert` for a client certificate). */
  nodeOptions?: http2.SecureClientSessionOptions;
}

/** Options of `Steward.fromEnv`: a `Steward`'s, but the API key comes from the environment. */
export interface FromEnvOptions extends Omit<StewardOptions, "apiKey" | "accessToken"> {
  /** The environment to read (default: `process.env`). */
  env?: Record<string, string | undefined>;
}

/**
 * A connection to Steward from Node: gRPC over HTTP/2, one HTTP/2 connection, one client per
 * public service (see `StewardBase` for tokens, retries and pages).
 *
 * `target` is `host:port`, `http://host:port` or `https://host:port`. Plaintext unless TLS is asked
 * for by an `https://` target, `tls: true` or `rootCerts`; `http://` with TLS settings throws.
 * `target` (the property) is `host:port`; `tls` tells whether TLS is on. Over TLS prefer a host
 * name to an IP address: Node sends the host as TLS server name, and warns (DEP0123) for an IP.
 */
export class Steward extends StewardBase {
  /** `host:port`, without scheme. */
  readonly target: string;
  /** Whether the connection uses TLS. */
  readonly tls: boolean;
  readonly #sessions: Http2SessionManager[];

  constructor(target: string, options: StewardOptions = {}) {
    const [hostPort, tls] = parseTarget(target, options);
    const baseUrl = `${tls ? "https" : "http"}://${hostPort}`;
    const nodeOptions: http2.SecureClientSessionOptions = { ...options.nodeOptions };
    if (options.rootCerts !== undefined) nodeOptions.ca = options.rootCerts;
    const sessions: Http2SessionManager[] = [];
    super((interceptors) => {
      const sessionManager = new Http2SessionManager(baseUrl, {}, nodeOptions);
      sessions.push(sessionManager);
      return createGrpcTransport({
        baseUrl,
        sessionManager,
        interceptors,
        defaultTimeoutMs: options.defaultTimeoutMs,
      });
    }, options);
    this.#sessions = sessions;
    this.target = hostPort;
    this.tls = tls;
  }

  /**
   * A client acting as the service account whose API key is in `STEWARD_API_KEY`.
   *
   * As the CLI: the server is `target`, else `STEWARD_SERVER`, else `127.0.0.1:50051`; over TLS,
   * unless `rootCerts` is given, the CA in the PEM file `STEWARD_CA_FILE` (when set) is trusted.
   * `options.env` replaces `process.env`. An unset or empty `STEWARD_API_KEY` throws. Nothing is
   * sent until the first call.
   */
  static fromEnv(target?: string, options: FromEnvOptions = {}): Steward {
    const { env = process.env, ...rest } = options;
    const apiKey = (env[API_KEY_VAR] ?? "").trim();
    if (!apiKey) {
      throw new Error(`${API_KEY_VAR} is not set: it must hold a service account's API key`);
    }
    if ("apiKey" in rest || "accessToken" in rest) {
      throw new Error(`fromEnv takes the API key from ${API_KEY_VAR}, not from options`);
    }
    target ??= (env[SERVER_VAR] ?? "").trim() || DEFAULT_TARGET;
    const caFile = (env[CA_FILE_VAR] ?? "").trim();
    const settings: StewardOptions = { ...rest, apiKey };
    if (caFile && settings.rootCerts === undefined && settings.tls !== false && !/^http:\/\//i.test(target)) {
      settings.rootCerts = readFileSync(caFile);
    }
    return new Steward(target, settings);
  }

  /** Closes the HTTP/2 connections (calls under way are aborted). */
  close(): void {
    for (const session of this.#sessions) session.abort();
  }
}

/** `host:port` and whether to use TLS. */
function parseTarget(target: string, options: StewardOptions): [string, boolean] {
  const { tls, rootCerts } = options;
  if (tls === false && rootCerts !== undefined) throw new Error("tls: false contradicts rootCerts");
  let secure = tls === true || rootCerts !== undefined;
  const scheme = /^(https?):\/\//i.exec(target)?.[1].toLowerCase();
  if (!scheme) {
    if (!/^[^/\s]+:\d+$/.test(target)) throw new Error(`expected host:port, got ${JSON.stringify(target)}`);
    return [target, secure];
  }
  const url = URL.canParse(target) ? new URL(target) : undefined;
  const extra = url && (url.username || url.password || url.search || url.hash || url.pathname !== "/");
  if (!url || !url.hostname || extra) {
    throw new Error(`expected ${scheme}://host[:port], got ${JSON.stringify(target)}`);
  }
  if (scheme === "http" && secure) {
    throw new Error(`${JSON.stringify(target)} is plaintext (http://); use https:// for TLS`);
  }
  if (scheme === "https") {
    if (tls === false) throw new Error(`tls: false contradicts ${JSON.stringify(target)}`);
    secure = true;
  }
  // `URL` leaves out the scheme's default port.
  return [`${url.hostname}:${url.port || (scheme === "https" ? 443 : 80)}`, secure];
}

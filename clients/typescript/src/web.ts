/**
 * Steward from a browser (or any runtime with `fetch`): gRPC-Web through
 * `@connectrpc/connect-web`, the same API as the Node `Steward` (tokens, retries, pages).
 *
 * ```ts
 * import { StewardWeb } from "@steward/client/web";
 *
 * const steward = new StewardWeb("https://steward.example.com");
 * await steward.signIn(email, password);
 * ```
 *
 * The server must allow the page's origin (`server.cors_allowed_origins`). TLS is the browser's
 * (or the runtime's `fetch`'s) business: name an `https://` URL.
 */

import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { SessionOptions, StewardBase } from "./core.js";

export * from "./exports.js";

/** Options of a `StewardWeb` connection. */
export interface StewardWebOptions extends SessionOptions {
  /** The `fetch` to use (default: `globalThis.fetch`). */
  fetch?: typeof globalThis.fetch;
}

/** A gRPC-Web connection to Steward; `baseUrl` is `http(s)://host[:port]`. */
export class StewardWeb extends StewardBase {
  readonly baseUrl: string;

  constructor(baseUrl: string, options: StewardWebOptions = {}) {
    if (!/^https?:\/\/[^/]+\/?$/i.test(baseUrl)) {
      throw new Error(`expected http(s)://host[:port], got ${JSON.stringify(baseUrl)}`);
    }
    super(
      (interceptors) =>
        createGrpcWebTransport({
          baseUrl,
          interceptors,
          fetch: options.fetch,
          defaultTimeoutMs: options.defaultTimeoutMs,
        }),
      options,
    );
    this.baseUrl = baseUrl;
  }
}

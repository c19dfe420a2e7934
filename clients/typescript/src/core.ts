/**
 * What the Node client (`Steward`, gRPC over HTTP/2) and the browser client (`StewardWeb`,
 * gRPC-Web) share: one Connect client per public service over a transport, the session's tokens
 * (renewed before they expire, and once on UNAUTHENTICATED), retries of idempotent calls on
 * UNAVAILABLE, pagination and error details. Nothing here needs Node.
 */

import {
  Client,
  Code,
  ConnectError,
  createClient,
  Interceptor,
  StreamRequest,
  Transport,
  UnaryRequest,
} from "@connectrpc/connect";
import type { DescMessage, DescMethod, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";

import { AdminService, ListAdministratorsRequestSchema } from "./gen/steward/admin/v1/admin_pb.js";
import type { Administrator } from "./gen/steward/admin/v1/administrator_pb.js";
import { OrganizationService } from "./gen/steward/admin/v1/organization_pb.js";
import { RoleService } from "./gen/steward/admin/v1/role_pb.js";
import { ServiceAccountService } from "./gen/steward/admin/v1/service_account_pb.js";
import { AuditService } from "./gen/steward/audit/v1/audit_pb.js";
import {
  AuthService,
  type ExchangeApiKeyResponse,
  type SignInResponse,
  type TokenSet,
} from "./gen/steward/auth/v1/auth_pb.js";
import { BillingService } from "./gen/steward/billing/v1/billing_pb.js";
import { AgentService } from "./gen/steward/commands/v1/agent_pb.js";
import { CommandService } from "./gen/steward/commands/v1/commands_pb.js";
import { SystemService } from "./gen/steward/commands/v1/systems_pb.js";
import {
  BadRequestSchema,
  DebugInfoSchema,
  ErrorInfoSchema,
  HelpSchema,
  LocalizedMessageSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  RequestInfoSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
  type BadRequest,
  type DebugInfo,
  type ErrorInfo,
  type Help,
  type LocalizedMessage,
  type PreconditionFailure,
  type QuotaFailure,
  type RequestInfo,
  type ResourceInfo,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";

/** Calls that need no access token: never preceded by a renewal, nor retried on UNAUTHENTICATED. */
export const PUBLIC_METHODS: ReadonlySet<string> = new Set([
  ...["SignIn", "VerifyMfa", "AcceptInvite", "RefreshSession", "ExchangeApiKey", "RequestPasswordReset", "ResetPassword", "GetJwks"].map(
    (m) => `/steward.auth.v1.AuthService/${m}`,
  ),
  "/steward.commands.v1.AgentService/RegisterAgent",
]);

/**
 * Whether a call has no side effects, and so is retried on UNAVAILABLE: `Get*`, `List*`,
 * `CheckAccess`, `BatchCheckAccess`, `WatchRun`, and any method the protos mark idempotent.
 */
export function isIdempotent(method: DescMethod): boolean {
  if (method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming") return false;
  if (method.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN) return true;
  return /^(Get|List)/.test(method.name) || ["CheckAccess", "BatchCheckAccess", "WatchRun"].includes(method.name);
}

/** How idempotent calls are retried on UNAVAILABLE (as a gRPC `retryPolicy` would). */
export interface RetryPolicy {
  /** Attempts in all, the first included (default 5). */
  maxAttempts: number;
  /** Wait before the first retry, in ms (default 200); each next one is `backoffMultiplier` times longer. */
  initialBackoffMs: number;
  /** Longest wait, in ms (default 5 000). */
  maxBackoffMs: number;
  /** Default 2. */
  backoffMultiplier: number;
}

export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 5,
  initialBackoffMs: 200,
  maxBackoffMs: 5_000,
  backoffMultiplier: 2,
});

/** Options every Steward client takes. */
export interface SessionOptions {
  /** The access token to send with every call, as it is (nothing to renew it with). */
  accessToken?: string;
  /**
   * A service account's API key (`stw_{key}_{secret}`): the client acts as that account, trading
   * the key for an access token (`AuthService.ExchangeApiKey`) before its first call and again
   * before the token expires. Not with `accessToken`.
   */
  apiKey?: string;
  /**
   * How long before the access token expires to renew it (RefreshSession, or ExchangeApiKey with an
   * API key), in milliseconds (default 60 000; at most half the token's lifetime).
   */
  tokenRefreshMarginMs?: number;
  /** Deadline for calls made without `timeoutMs`, in milliseconds. Unset: none. */
  defaultTimeoutMs?: number;
  /** Retries of idempotent calls on UNAVAILABLE; `false`: none. Default `DEFAULT_RETRY_POLICY`. */
  retry?: Partial<RetryPolicy> | false;
  /** More Connect interceptors, run inside the client's own (after the token is set). */
  interceptors?: Interceptor[];
}

/** What a client needs from its flavour (Node or web): a transport with these interceptors. */
export type TransportFactory = (interceptors: Interceptor[]) => Transport;

/** A service account's API key; in a private field, so never shown by `util.inspect` nor JSON. */
class Secret {
  readonly #value: string;
  constructor(value: string, what: string) {
    if (typeof value !== "string") throw new TypeError(`${what} must be a string`);
    value = value.trim();
    if (!value) throw new Error(`${what} is empty`);
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toString(): string {
    return "<redacted>";
  }
  toJSON(): string {
    return "<redacted>";
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return "<redacted>";
  }
}

/** `steward.administrators`: every administrator of an organization, page after page. */
export class Administrators {
  readonly #steward: StewardBase;

  constructor(steward: StewardBase) {
    this.#steward = steward;
  }

  /** `for await` over `AdminService.ListAdministrators`, all pages (`pageSize` each). */
  list(
    request: MessageInitShape<typeof ListAdministratorsRequestSchema>,
    options?: CallOptions,
  ): AsyncIterable<Administrator> {
    const steward = this.#steward;
    return steward.paginate((r, o) => steward.admin.listAdministrators(r, o), request, options);
  }
}

/** Per-call options of the generated clients (Connect's `CallOptions`). */
export type CallOptions = Parameters<Client<typeof AdminService>["getProfile"]>[1];

/**
 * The shared client. `Steward` (Node) and `StewardWeb` (browsers) make its transport.
 *
 * Tokens: after `signIn` (or `setTokens`) it keeps the refresh token and calls `RefreshSession`
 * before a call made within `tokenRefreshMarginMs` of the access token's expiry; with `apiKey`
 * it calls `ExchangeApiKey` the same way, and before the first call. A call refused with
 * UNAUTHENTICATED (a token revoked or expired early) renews once and is retried once (calls that
 * stream requests are not). When a renewal is refused while the current token has not expired,
 * that token is still used (the next call tries again); otherwise the call fails with the
 * renewal's error. One renewal at a time: concurrent calls share it.
 */
export abstract class StewardBase {
  readonly auth: Client<typeof AuthService>;
  readonly admin: Client<typeof AdminService>;
  readonly organizations: Client<typeof OrganizationService>;
  readonly roles: Client<typeof RoleService>;
  readonly serviceAccounts: Client<typeof ServiceAccountService>;
  readonly billing: Client<typeof BillingService>;
  readonly audit: Client<typeof AuditService>;
  readonly commands: Client<typeof CommandService>;
  readonly systems: Client<typeof SystemService>;
  readonly agents: Client<typeof AgentService>;
  readonly administrators: Administrators;
  /** The transport every service client uses (with the client's interceptors). */
  readonly transport: Transport;

  #apiKey: Secret | undefined;
  #refreshToken: Secret | undefined;
  private token: string | undefined;
  private tokenExpiryMs: number | undefined;
  private tokenLifetimeMs: number | undefined;
  private readonly tokenRefreshMarginMs: number;
  /** The renewal under way, shared by the calls waiting for it. */
  private renewing: Promise<string> | undefined;
  /** Renewals go through a client without the interceptor that asks for them. */
  private readonly rawAuth: Client<typeof AuthService>;

  protected constructor(makeTransport: TransportFactory, options: SessionOptions = {}) {
    if (options.apiKey !== undefined && options.accessToken !== undefined) {
      throw new Error("pass either accessToken or apiKey, not both");
    }
    const margin = options.tokenRefreshMarginMs ?? 60_000;
    if (!(margin >= 0)) throw new Error("tokenRefreshMarginMs must not be negative");
    this.#apiKey = options.apiKey === undefined ? undefined : new Secret(options.apiKey, "apiKey");
    this.tokenRefreshMarginMs = margin;
    this.token = options.accessToken;
    const retry = options.retry === false ? undefined : { ...DEFAULT_RETRY_POLICY, ...options.retry };
    // Outermost first: the token, retries, the caller's, and what the connection's errors mean.
    const retries = retry ? [retryInterceptor(retry)] : [];
    const inner = [...(options.interceptors ?? []), connectionErrorInterceptor];
    this.transport = makeTransport([this.authInterceptor(), ...retries, ...inner]);
    this.rawAuth = createClient(AuthService, makeTransport([...retries, connectionErrorInterceptor]));
    this.auth = createClient(AuthService, this.transport);
    this.admin = createClient(AdminService, this.transport);
    this.organizations = createClient(OrganizationService, this.transport);
    this.roles = createClient(RoleService, this.transport);
    this.serviceAccounts = createClient(ServiceAccountService, this.transport);
    this.billing = createClient(BillingService, this.transport);
    this.audit = createClient(AuditService, this.transport);
    this.commands = createClient(CommandService, this.transport);
    this.systems = createClient(SystemService, this.transport);
    this.agents = createClient(AgentService, this.transport);
    this.administrators = new Administrators(this);
  }

  /** A client of any service over this client's transport (token, renewal and retries included). */
  service<S extends DescService>(service: S): Client<S> {
    return createClient(service, this.transport);
  }

  // --- tokens -----------------------------------------------------------------------------------

  /** The access token sent with every call, if any (the last one received; never renews). */
  get accessToken(): string | undefined {
    return this.token;
  }

  /** When the current access token expires, when the server said so. */
  get accessTokenExpireTime(): Date | undefined {
    return this.tokenExpiryMs === undefined ? undefined : new Date(this.tokenExpiryMs);
  }

  /** Whether this client acts as a service account through an API key. */
  get usesApiKey(): boolean {
    return this.#apiKey !== undefined;
  }

  /** Whether this client holds a session's refresh token (after `signIn`). */
  get hasRefreshToken(): boolean {
    return this.#refreshToken !== undefined;
  }

  /** Sends `token` (or none) with every call, as it is: nothing to renew it with. */
  setAccessToken(token: string | undefined): void {
    this.#apiKey = this.#refreshToken = undefined;
    this.token = token;
    this.tokenExpiryMs = this.tokenLifetimeMs = undefined;
  }

  /** Uses a `TokenSet` (VerifyMfa's, RefreshSession's), keeping its refresh token. */
  setTokens(tokens: TokenSet): void {
    this.setAccessToken(undefined);
    this.accept(tokens);
  }

  /**
   * Signs in with email and password. When the answer carries tokens they are used from then on
   * (the refresh token too); when it is an MFA challenge, complete it with `auth.verifyMfa` and
   * call `setTokens` with its `tokens`.
   */
  async signIn(email: string, password: string, organization = ""): Promise<SignInResponse> {
    const response = await this.auth.signIn({ email, password, organization });
    if (response.result.case === "tokens") this.setTokens(response.result.value);
    return response;
  }

  /**
   * Acts as the service account of `apiKey` from now on: trades the key for an access token at
   * once (a refused key rejects, UNAUTHENTICATED, and changes nothing), then again before that
   * token expires, as with the `apiKey` option.
   */
  async signInWithApiKey(apiKey: string): Promise<ExchangeApiKeyResponse> {
    const key = new Secret(apiKey, "apiKey");
    await this.renewing?.catch(() => undefined);
    const response = await this.rawAuth.exchangeApiKey({ apiKey: key.reveal() });
    this.setAccessToken(undefined);
    this.#apiKey = key;
    this.accept(response.tokens);
    return response;
  }

  private get renewable(): boolean {
    return this.#apiKey !== undefined || this.#refreshToken !== undefined;
  }

  /** Whether the next call should renew first. */
  private due(): boolean {
    if (!this.renewable) return false;
    if (!this.token) return true;
    if (this.tokenExpiryMs === undefined) return false;
    let margin = this.tokenRefreshMarginMs;
    if (this.tokenLifetimeMs !== undefined) margin = Math.min(margin, this.tokenLifetimeMs / 2);
    return Date.now() >= this.tokenExpiryMs - margin;
  }

  private accept(tokens: TokenSet | undefined): void {
    if (!tokens?.accessToken) throw new Error("the server answered no access token");
    const now = Date.now();
    this.token = tokens.accessToken;
    const expire = tokens.accessTokenExpireTime;
    this.tokenExpiryMs =
      expire === undefined ? undefined : Number(expire.seconds) * 1000 + Math.floor(expire.nanos / 1e6);
    this.tokenLifetimeMs = this.tokenExpiryMs === undefined ? undefined : Math.max(this.tokenExpiryMs - now, 0);
    if (this.#apiKey === undefined) {
      this.#refreshToken = tokens.refreshToken ? new Secret(tokens.refreshToken, "refresh token") : undefined;
    }
  }

  /** Renews now: RefreshSession or ExchangeApiKey; one renewal at a time. */
  private renew(): Promise<string> {
    if (this.renewing === undefined) {
      const key = this.#apiKey;
      const refresh = this.#refreshToken;
      const call = key
        ? this.rawAuth.exchangeApiKey({ apiKey: key.reveal() })
        : this.rawAuth.refreshSession({ refreshToken: refresh!.reveal() });
      const renewing = call.then((response) => {
        // Unless the credentials changed meanwhile.
        if (this.#apiKey === key && (key !== undefined || this.#refreshToken === refresh)) {
          this.accept(response.tokens);
        }
        return response.tokens!.accessToken;
      });
      this.renewing = renewing;
      const done = () => {
        if (this.renewing === renewing) this.renewing = undefined;
      };
      renewing.then(done, done);
    }
    return this.renewing;
  }

  /** The token for the next call; renewed first when due. */
  private async tokenFor(renew: boolean): Promise<string | undefined> {
    if (!renew || !this.due()) return this.token;
    try {
      return await this.renew();
    } catch (error) {
      if (this.token && this.tokenExpiryMs !== undefined && Date.now() < this.tokenExpiryMs) return this.token;
      throw error;
    }
  }

  /** After `refused` got UNAUTHENTICATED: a renewed token to retry with, or undefined. */
  private async renewAfterRefusal(refused: string): Promise<string | undefined> {
    if (!this.renewable) return undefined;
    await this.renewing?.catch(() => undefined);
    if (this.token && this.token !== refused) return this.token; // renewed meanwhile
    try {
      return await this.renew();
    } catch {
      return undefined;
    }
  }

  private authInterceptor(): Interceptor {
    return (next) => async (req) => {
      if (req.header.has("authorization")) return next(req);
      const path = `/${req.service.typeName}/${req.method.name}`;
      const isPublic = PUBLIC_METHODS.has(path);
      const token = await this.tokenFor(!isPublic);
      const streamsRequests = req.method.methodKind === "client_streaming" || req.method.methodKind === "bidi_streaming";
      if (!token || isPublic || streamsRequests) {
        if (token) req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      }
      const attempt = await replayable(req);
      const first = attempt();
      first.header.set("authorization", `Bearer ${token}`);
      try {
        return await next(first);
      } catch (error) {
        if (ConnectError.from(error).code !== Code.Unauthenticated) throw error;
        const renewed = await this.renewAfterRefusal(token);
        if (renewed === undefined) throw error;
        const second = attempt();
        second.header.set("authorization", `Bearer ${renewed}`);
        return await next(second);
      }
    };
  }

  // --- pages ------------------------------------------------------------------------------------

  /**
   * Every item of a `List*` call over all pages, following `nextPageToken`, fetched as the
   * iteration reaches them:
   *
   * ```ts
   * for await (const c of steward.paginate((r, o) => steward.commands.listCommands(r, o), { parent: org })) ...
   * ```
   *
   * `items` names the response's repeated field (default: the first array of messages in it).
   */
  async *paginate<Req extends { pageToken?: string }, Res extends { nextPageToken: string }, Item = unknown>(
    call: (request: Req, options?: CallOptions) => Promise<Res>,
    request: Req,
    options?: CallOptions,
    items?: keyof Res,
  ): AsyncGenerator<Item> {
    let pageToken = request.pageToken ?? "";
    for (;;) {
      const page = await call({ ...request, pageToken }, options);
      const field = items ?? itemsField(page);
      yield* (page[field] as unknown as Item[]);
      if (!page.nextPageToken) return;
      pageToken = page.nextPageToken;
    }
  }
}

function itemsField<Res extends object>(page: Res): keyof Res {
  for (const [key, value] of Object.entries(page)) {
    if (Array.isArray(value) && key !== "$unknown") return key as keyof Res;
  }
  throw new Error("the response has no repeated field to page through");
}

/** Node's codes for a connection that failed or broke: gRPC calls those UNAVAILABLE. */
const CONNECTION_ERRORS = /^(ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ERR_HTTP2_GOAWAY_SESSION|ERR_HTTP2_SESSION_ERROR|ERR_HTTP2_STREAM_CANCEL|ERR_SSL_.*|ERR_TLS_.*|UNABLE_TO_.*|.*CERT.*)$/;

/** A ConnectError from a broken or refused connection, as UNAVAILABLE (gRPC's code for it). */
export function normalizeConnectionError(error: unknown): unknown {
  const err = ConnectError.from(error);
  if (err.code === Code.Unavailable) return err;
  for (let cause: any = err.cause; cause; cause = cause.cause) {
    if (typeof cause.code === "string" && CONNECTION_ERRORS.test(cause.code)) {
      return new ConnectError(err.rawMessage, Code.Unavailable, err.metadata, err.details as any[], err.cause);
    }
  }
  return error;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });

/** Errors of a connection that failed or broke become UNAVAILABLE, as gRPC has them. */
export const connectionErrorInterceptor: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (error) {
    throw normalizeConnectionError(error);
  }
};

/**
 * A request that can be sent again: a server stream's request is an async iterable of its one
 * message, used up by the first attempt; it is read once and replayed.
 */
export async function replayable<R extends UnaryRequest | StreamRequest>(req: R): Promise<() => R> {
  if (!req.stream || req.method.methodKind !== "server_streaming") return () => req;
  const messages: unknown[] = [];
  for await (const message of req.message as AsyncIterable<unknown>) messages.push(message);
  return () => ({ ...req, message: (async function* () { yield* messages; })() });
}

/** Retries idempotent calls on UNAVAILABLE with exponential backoff (±20% jitter). */
export function retryInterceptor(policy: RetryPolicy): Interceptor {
  return (next) => async (req) => {
    if (!isIdempotent(req.method)) return await next(req);
    const attempt = await replayable(req);
    let backoff = policy.initialBackoffMs;
    for (let n = 1; ; n++) {
      try {
        return await next(attempt());
      } catch (error) {
        const err = ConnectError.from(error);
        if (err.code !== Code.Unavailable || n >= policy.maxAttempts || req.signal.aborted) {
          throw error;
        }
        await sleep(backoff * (0.8 + 0.4 * Math.random()), req.signal);
        backoff = Math.min(backoff * policy.backoffMultiplier, policy.maxBackoffMs);
      }
    }
  };
}

// --- rich errors ----------------------------------------------------------------------------------

/** The `google.rpc.Status` of a failed call, with its details decoded. */
export interface ErrorDetails {
  code: Code;
  message: string;
  errorInfo?: ErrorInfo;
  badRequest?: BadRequest;
  preconditionFailure?: PreconditionFailure;
  retryInfo?: RetryInfo;
  quotaFailure?: QuotaFailure;
  resourceInfo?: ResourceInfo;
  requestInfo?: RequestInfo;
  debugInfo?: DebugInfo;
  help?: Help;
  localizedMessage?: LocalizedMessage;
}

const detailSchemas: [keyof ErrorDetails, DescMessage][] = [
  ["errorInfo", ErrorInfoSchema],
  ["badRequest", BadRequestSchema],
  ["preconditionFailure", PreconditionFailureSchema],
  ["retryInfo", RetryInfoSchema],
  ["quotaFailure", QuotaFailureSchema],
  ["resourceInfo", ResourceInfoSchema],
  ["requestInfo", RequestInfoSchema],
  ["debugInfo", DebugInfoSchema],
  ["help", HelpSchema],
  ["localizedMessage", LocalizedMessageSchema],
];

/** Decodes the `google.rpc` details Steward attaches to errors (`grpc-status-details-bin`). */
export function errorDetails(error: unknown): ErrorDetails {
  const err = ConnectError.from(error);
  const result: ErrorDetails = { code: err.code, message: err.rawMessage };
  for (const [field, schema] of detailSchemas) {
    const found = err.findDetails(schema) as MessageShape<DescMessage>[];
    if (found.length > 0) (result as any)[field] = found[0];
  }
  return result;
}

/** Whether `error` is a Connect error with the given code. */
export function isCode(error: unknown, code: Code): error is ConnectError {
  return error instanceof ConnectError && error.code === code;
}

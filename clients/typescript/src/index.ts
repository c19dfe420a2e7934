/**
 * TypeScript client SDK for Steward's gRPC API.
 *
 * The messages and service definitions are generated from the protos by `generate.sh` (ts-proto)
 * into `src/gen/`; this module adds a thin `Steward` wrapper over `@grpc/grpc-js`: one channel,
 * the access token sent with every call, and one promise-based client per public service.
 *
 * ```ts
 * const steward = new Steward("127.0.0.1:50051");
 * await steward.signIn("owner@example.com", "a long and unusual passphrase");
 * const { profile } = await steward.admin.getProfile({});
 * const { administrators } = await steward.admin.listAdministrators({
 *   parent: profile!.organization!.name,
 * });
 * steward.close();
 * ```
 *
 * Over TLS, name the target `https://host:port` (or pass `tls: true`) and, for a server whose
 * certificate is not signed by a public CA (`steward-server dev --tls`), the CA to trust:
 * `new Steward("https://localhost:50051", { rootCerts: readFileSync("data/tls/ca.pem") })`.
 *
 * A program (a CI job) acts as a service account with its API key instead: the `apiKey` option, or
 * `Steward.fromEnv()`, which reads `STEWARD_API_KEY` (and `STEWARD_SERVER`, `STEWARD_CA_FILE`).
 * The key is traded for an access token (`AuthService.ExchangeApiKey`) before the first call and
 * again shortly before that token expires; it is never logged, nor shown by `util.inspect`.
 *
 * Failed calls reject with a grpc-js `ServiceError`; `errorDetails` decodes the `google.rpc`
 * details (`PreconditionFailure`, `BadRequest`, `ErrorInfo`, `RetryInfo`...) attached to it.
 */

import {
  CallOptions,
  ChannelCredentials,
  ChannelOptions,
  Client,
  ClientDuplexStream,
  ClientReadableStream,
  credentials as grpcCredentials,
  Interceptor,
  InterceptingCall,
  Metadata,
  ServiceError,
  status as grpcStatus,
} from "@grpc/grpc-js";

import { AdminServiceDefinition } from "./gen/steward/admin/v1/admin";
import { OrganizationServiceDefinition } from "./gen/steward/admin/v1/organization";
import { RoleServiceDefinition } from "./gen/steward/admin/v1/role";
import { ServiceAccountServiceDefinition } from "./gen/steward/admin/v1/service_account";
import { AuditServiceDefinition } from "./gen/steward/audit/v1/audit";
import {
  AuthServiceDefinition,
  ExchangeApiKeyRequest,
  ExchangeApiKeyResponse,
  SignInRequest,
  SignInResponse,
} from "./gen/steward/auth/v1/auth";
import { BillingServiceDefinition } from "./gen/steward/billing/v1/billing";
import { AgentServiceDefinition } from "./gen/steward/commands/v1/agent";
import { CommandServiceDefinition } from "./gen/steward/commands/v1/commands";
import { SystemServiceDefinition } from "./gen/steward/commands/v1/systems";
import { readFileSync } from "node:fs";

import { Any } from "./gen/google/protobuf/any";
import { Status } from "./gen/google/rpc/status";
import {
  BadRequest,
  DebugInfo,
  ErrorInfo,
  Help,
  LocalizedMessage,
  PreconditionFailure,
  QuotaFailure,
  RequestInfo,
  ResourceInfo,
  RetryInfo,
} from "./gen/google/rpc/error_details";

export { Metadata, ServiceError, status } from "@grpc/grpc-js";
export * as adminV1 from "./gen/steward/admin/v1/admin";
export * as administratorV1 from "./gen/steward/admin/v1/administrator";
export * as organizationV1 from "./gen/steward/admin/v1/organization";
export * as roleV1 from "./gen/steward/admin/v1/role";
export * as serviceAccountV1 from "./gen/steward/admin/v1/service_account";
export * as auditV1 from "./gen/steward/audit/v1/audit";
export * as authV1 from "./gen/steward/auth/v1/auth";
export * as billingV1 from "./gen/steward/billing/v1/billing";
export * as agentV1 from "./gen/steward/commands/v1/agent";
export * as commandsV1 from "./gen/steward/commands/v1/commands";
export * as systemsV1 from "./gen/steward/commands/v1/systems";
export * as errorDetailsV1 from "./gen/google/rpc/error_details";

// --- typed clients from ts-proto's generic service definitions ---------------------------------

/** What this wrapper needs of a generated message type. */
interface MessageType<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
  fromPartial(object: any): T;
}

interface MethodDefinition {
  readonly name: string;
  readonly requestType: MessageType<any>;
  readonly requestStream: boolean;
  readonly responseType: MessageType<any>;
  readonly responseStream: boolean;
}

interface ServiceDefinition {
  readonly fullName: string;
  readonly methods: { readonly [method: string]: MethodDefinition };
}

type Builtin = Date | Function | Uint8Array | string | number | boolean | undefined;

/** A message where every field may be left out (it then takes its default value). */
export type DeepPartial<T> = T extends Builtin
  ? T
  : T extends Array<infer U>
    ? Array<DeepPartial<U>>
    : T extends ReadonlyArray<infer U>
      ? ReadonlyArray<DeepPartial<U>>
      : T extends {}
        ? { [K in keyof T]?: DeepPartial<T[K]> }
        : Partial<T>;

type RequestOf<M> = M extends { requestType: { decode(input: Uint8Array): infer R } } ? R : never;
type ResponseOf<M> = M extends { responseType: { decode(input: Uint8Array): infer R } } ? R : never;

/** Per-call options. */
export interface CallOpts {
  /** Extra metadata for this call (an `authorization` entry here replaces the access token). */
  metadata?: Metadata;
  /** Deadline in milliseconds from now; defaults to the client's `defaultTimeoutMs` for unary calls. */
  timeoutMs?: number;
}

type MethodFn<M> = M extends { requestStream: false; responseStream: false }
  ? (request: DeepPartial<RequestOf<M>>, options?: CallOpts) => Promise<ResponseOf<M>>
  : M extends { requestStream: false; responseStream: true }
    ? (request: DeepPartial<RequestOf<M>>, options?: CallOpts) => ClientReadableStream<ResponseOf<M>>
    : M extends { requestStream: true; responseStream: true }
      ? (options?: CallOpts) => ClientDuplexStream<RequestOf<M>, ResponseOf<M>>
      : never;

/** A promise-based client of one service: unary methods return promises, streams are grpc-js streams. */
export type ServiceClient<D extends ServiceDefinition> = {
  [K in keyof D["methods"]]: MethodFn<D["methods"][K]>;
};

/** The environment variable `Steward.fromEnv` reads the API key from. */
export const API_KEY_VAR = "STEWARD_API_KEY";
/** The environment variable `Steward.fromEnv` reads the server from (as the CLI does). */
export const SERVER_VAR = "STEWARD_SERVER";
/** The environment variable `Steward.fromEnv` reads the PEM file of the CA to trust from. */
export const CA_FILE_VAR = "STEWARD_CA_FILE";
/** The server `Steward.fromEnv` uses when neither a target nor `STEWARD_SERVER` is given. */
export const DEFAULT_TARGET = "127.0.0.1:50051";

/** Options of a `Steward` connection. */
export interface StewardOptions {
  /** The access token to send with every call. */
  accessToken?: string;
  /**
   * A service account's API key (`stw_{key}_{secret}`): the client acts as that account. Before its
   * first call it trades the key for an access token (`AuthService.ExchangeApiKey`), and again
   * before a call made within `tokenRefreshMarginMs` of that token's expiry. Not with `accessToken`.
   */
  apiKey?: string;
  /**
   * With `apiKey`: how long before the access token expires to exchange the key again, in
   * milliseconds (default 60 000; at most half the token's lifetime).
   */
  tokenRefreshMarginMs?: number;
  /**
   * TLS (`credentials.createSsl(rootCerts)`): implied by an `https://` target or by `rootCerts`.
   * `false` forbids TLS (an error with `https://`, `rootCerts` or `credentials`).
   */
  tls?: boolean;
  /** PEM of the CA(s) to trust over TLS; unset: Node's default roots. Implies TLS. */
  rootCerts?: Buffer;
  /** Ready channel credentials (e.g. with a client certificate), used as they are; not with rootCerts. */
  credentials?: ChannelCredentials;
  /** grpc-js channel options. */
  channelOptions?: ChannelOptions;
  /** Deadline for unary calls made without `timeoutMs`, in milliseconds. Unset: none. */
  defaultTimeoutMs?: number;
}

/** Options of `Steward.fromEnv`: a `Steward`'s, but the API key comes from the environment. */
export interface FromEnvOptions extends Omit<StewardOptions, "apiKey" | "accessToken"> {
  /** The environment to read (default: `process.env`). */
  env?: Record<string, string | undefined>;
}

/** A service account's API key; held in a private field, so never shown by `util.inspect`. */
class ApiKey {
  readonly #secret: string;
  constructor(secret: string) {
    if (typeof secret !== "string") throw new TypeError("apiKey must be a string");
    secret = secret.trim();
    if (!secret) throw new Error("apiKey is empty");
    this.#secret = secret;
  }
  reveal(): string {
    return this.#secret;
  }
  toString(): string {
    return "<api key redacted>";
  }
  toJSON(): string {
    return "<api key redacted>";
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return "<api key redacted>";
  }
}

/**
 * A connection to Steward: one channel, one client per public service.
 *
 * `target` is `host:port` (any grpc-js target), `http://host:port` or `https://host:port`. The
 * channel is plaintext unless TLS is asked for by an `https://` target, `tls: true`, `rootCerts` or
 * `credentials` (see `StewardOptions`); `http://` with TLS settings is an error. The `target`
 * property is the grpc target (`host:port`, without scheme); `tls` tells whether TLS is on.
 */
export class Steward {
  readonly auth: ServiceClient<typeof AuthServiceDefinition>;
  readonly admin: ServiceClient<typeof AdminServiceDefinition>;
  readonly organizations: ServiceClient<typeof OrganizationServiceDefinition>;
  readonly roles: ServiceClient<typeof RoleServiceDefinition>;
  readonly serviceAccounts: ServiceClient<typeof ServiceAccountServiceDefinition>;
  readonly billing: ServiceClient<typeof BillingServiceDefinition>;
  readonly audit: ServiceClient<typeof AuditServiceDefinition>;
  readonly commands: ServiceClient<typeof CommandServiceDefinition>;
  readonly systems: ServiceClient<typeof SystemServiceDefinition>;
  readonly agents: ServiceClient<typeof AgentServiceDefinition>;

  /** The grpc target: `host:port`, without scheme. */
  readonly target: string;
  /** Whether the channel uses TLS. */
  readonly tls: boolean;

  private readonly client: Client;
  private token: string | undefined;
  private readonly defaultTimeoutMs: number | undefined;
  /** With an API key: the key, when its access token expires (ms since the epoch) and how long it lived. */
  #apiKey: ApiKey | undefined;
  private tokenExpiryMs: number | undefined;
  private tokenLifetimeMs: number | undefined;
  private readonly tokenRefreshMarginMs: number;
  /** The exchange under way, shared by the calls waiting for it. */
  private exchanging: Promise<string> | undefined;

  constructor(target: string, options: StewardOptions = {}) {
    if (options.apiKey !== undefined && options.accessToken !== undefined) {
      throw new Error("pass either accessToken or apiKey, not both");
    }
    const margin = options.tokenRefreshMarginMs ?? 60_000;
    if (!(margin >= 0)) throw new Error("tokenRefreshMarginMs must not be negative");
    this.#apiKey = options.apiKey === undefined ? undefined : new ApiKey(options.apiKey);
    this.tokenRefreshMarginMs = margin;
    const [channelTarget, channelCredentials] = channelSettings(target, options);
    this.target = channelTarget;
    this.tls = channelCredentials._isSecure();
    this.client = new Client(channelTarget, channelCredentials, options.channelOptions ?? {});
    this.token = options.accessToken;
    this.defaultTimeoutMs = options.defaultTimeoutMs;
    this.auth = this.service(AuthServiceDefinition);
    this.admin = this.service(AdminServiceDefinition);
    this.organizations = this.service(OrganizationServiceDefinition);
    this.roles = this.service(RoleServiceDefinition);
    this.serviceAccounts = this.service(ServiceAccountServiceDefinition);
    this.billing = this.service(BillingServiceDefinition);
    this.audit = this.service(AuditServiceDefinition);
    this.commands = this.service(CommandServiceDefinition);
    this.systems = this.service(SystemServiceDefinition);
    this.agents = this.service(AgentServiceDefinition);
  }

  /**
   * A client acting as the service account whose API key is in `STEWARD_API_KEY`.
   *
   * As the CLI: the server is `target`, else `STEWARD_SERVER`, else `127.0.0.1:50051`; over TLS,
   * unless `rootCerts` or `credentials` is given, the CA in the PEM file `STEWARD_CA_FILE` (when
   * set) is trusted. `options.env` replaces `process.env`. An unset or empty `STEWARD_API_KEY`
   * throws. Nothing is sent until the first call.
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
    if (
      caFile &&
      settings.rootCerts === undefined &&
      settings.credentials === undefined &&
      settings.tls !== false &&
      !/^http:\/\//i.test(target)
    ) {
      settings.rootCerts = readFileSync(caFile);
    }
    return new Steward(target, settings);
  }

  /**
   * The access token sent with every call, if any (with an API key: the last one exchanged, without
   * exchanging).
   */
  get accessToken(): string | undefined {
    return this.token;
  }

  /** With an API key, when its current access token expires; else undefined. */
  get accessTokenExpireTime(): Date | undefined {
    return this.tokenExpiryMs === undefined ? undefined : new Date(this.tokenExpiryMs);
  }

  /** Whether this client acts as a service account through an API key. */
  get usesApiKey(): boolean {
    return this.#apiKey !== undefined;
  }

  /**
   * Sets (or, with undefined, clears) the access token sent with every call. The client then stops
   * using an API key it had.
   */
  setAccessToken(token: string | undefined): void {
    this.#apiKey = undefined;
    this.token = token;
    this.tokenExpiryMs = this.tokenLifetimeMs = undefined;
  }

  /**
   * Acts as the service account of `apiKey` from now on: trades the key for an access token at once
   * (a refused key rejects, `UNAUTHENTICATED`, and changes nothing), then again whenever a call
   * comes shortly before that token expires, as with the `apiKey` option.
   */
  async signInWithApiKey(apiKey: string): Promise<ExchangeApiKeyResponse> {
    const key = new ApiKey(apiKey);
    await this.exchanging?.catch(() => undefined);
    const response = await this.exchange(key);
    this.#apiKey = key;
    this.accept(response);
    return response;
  }

  /** Whether the API key's token is missing or expires within the refresh margin. */
  private tokenDue(): boolean {
    if (!this.token) return true;
    if (this.tokenExpiryMs === undefined) return false;
    let margin = this.tokenRefreshMarginMs;
    if (this.tokenLifetimeMs !== undefined) margin = Math.min(margin, this.tokenLifetimeMs / 2);
    return Date.now() >= this.tokenExpiryMs - margin;
  }

  /**
   * The token for the next call. With an API key whose token is due, exchanges it first (one
   * exchange for all the calls waiting); if the exchange fails while the current token has not
   * expired yet, that one is used (the next call tries again), else the call fails with the error.
   */
  private async freshToken(): Promise<string | undefined> {
    const key = this.#apiKey;
    if (key === undefined || !this.tokenDue()) return this.token;
    if (this.exchanging === undefined) {
      const exchange = this.exchange(key).then((response) => {
        if (this.#apiKey === key) this.accept(response);
        return response.tokens!.accessToken;
      });
      this.exchanging = exchange;
      exchange.then(
        () => (this.exchanging = undefined),
        () => (this.exchanging = undefined),
      );
    }
    try {
      return await this.exchanging;
    } catch (error) {
      if (this.token && this.tokenExpiryMs !== undefined && Date.now() < this.tokenExpiryMs) {
        return this.token;
      }
      throw error;
    }
  }

  /** ExchangeApiKey, without the client's token. */
  private exchange(key: ApiKey): Promise<ExchangeApiKeyResponse> {
    const method = AuthServiceDefinition.methods.exchangeApiKey;
    const request = ExchangeApiKeyRequest.fromPartial({ apiKey: key.reveal() });
    return new Promise<ExchangeApiKeyResponse>((resolve, reject) => {
      this.client.makeUnaryRequest(
        `/${AuthServiceDefinition.fullName}/${method.name}`,
        (value: ExchangeApiKeyRequest) => Buffer.from(ExchangeApiKeyRequest.encode(value).finish()),
        (bytes: Buffer) => ExchangeApiKeyResponse.decode(bytes),
        request,
        new Metadata(),
        this.callOptions({}, true),
        (error: ServiceError | null, response?: ExchangeApiKeyResponse) => {
          if (error) return reject(error);
          if (!response?.tokens?.accessToken) {
            return reject(new Error("ExchangeApiKey answered no access token"));
          }
          resolve(response);
        },
      );
    });
  }

  /** Uses the access token of an ExchangeApiKey answer. */
  private accept(response: ExchangeApiKeyResponse): void {
    const tokens = response.tokens!;
    const now = Date.now();
    this.token = tokens.accessToken;
    this.tokenExpiryMs = tokens.accessTokenExpireTime?.getTime();
    this.tokenLifetimeMs =
      this.tokenExpiryMs === undefined ? undefined : Math.max(this.tokenExpiryMs - now, 0);
  }

  /**
   * Signs in with email and password. When the answer carries tokens, their access token is used
   * from then on (and an API key no longer); when it is an MFA challenge, complete it with
   * `auth.verifyMfa` and call `setAccessToken` with the result.
   */
  async signIn(email: string, password: string, organization = ""): Promise<SignInResponse> {
    const response = await this.auth.signIn(SignInRequest.fromPartial({ email, password, organization }));
    if (response.tokens) {
      this.setAccessToken(response.tokens.accessToken);
    }
    return response;
  }

  /** Closes the channel. */
  close(): void {
    this.client.close();
  }

  /** A client of any service of the protos, e.g. one not listed as a property. */
  service<D extends ServiceDefinition>(definition: D): ServiceClient<D> {
    const methods: Record<string, unknown> = {};
    for (const [key, method] of Object.entries(definition.methods)) {
      const path = `/${definition.fullName}/${method.name}`;
      const serialize = (value: unknown) => Buffer.from(method.requestType.encode(value).finish());
      const deserialize = (bytes: Buffer) => method.responseType.decode(bytes);
      if (!method.requestStream && !method.responseStream) {
        methods[key] = async (request: unknown, opts: CallOpts = {}) => {
          const message = method.requestType.fromPartial(request ?? {});
          const callOptions = this.callOptions(opts, true);
          // With an API key, the token is exchanged first when due.
          const token = this.#apiKey === undefined ? this.token : await this.freshToken();
          return new Promise((resolve, reject) => {
            this.client.makeUnaryRequest(
              path,
              serialize,
              deserialize,
              message,
              this.metadata(opts, token),
              callOptions,
              (error: ServiceError | null, response?: unknown) =>
                error ? reject(error) : resolve(response),
            );
          });
        };
      } else if (!method.requestStream && method.responseStream) {
        methods[key] = (request: unknown, opts: CallOpts = {}) =>
          this.client.makeServerStreamRequest(
            path,
            serialize,
            deserialize,
            method.requestType.fromPartial(request ?? {}),
            ...this.streamSettings(opts),
          );
      } else if (method.requestStream && method.responseStream) {
        methods[key] = (opts: CallOpts = {}) =>
          this.client.makeBidiStreamRequest(
            path,
            serialize,
            deserialize,
            ...this.streamSettings(opts),
          );
      }
    }
    return methods as ServiceClient<D>;
  }

  private metadata(opts: CallOpts, token: string | undefined): Metadata {
    const metadata = opts.metadata?.clone() ?? new Metadata();
    if (token && metadata.get("authorization").length === 0) {
      metadata.set("authorization", `Bearer ${token}`);
    }
    return metadata;
  }

  /**
   * A stream's metadata and call options. With an API key whose token is due, the stream starts
   * once the key is exchanged (an interceptor holds its start); a stream carrying its own
   * `authorization`, or with a fresh token, starts at once.
   */
  private streamSettings(opts: CallOpts): [Metadata, CallOptions] {
    const callOptions = this.callOptions(opts, false);
    if (this.#apiKey === undefined || !this.tokenDue()) {
      return [this.metadata(opts, this.token), callOptions];
    }
    const interceptor: Interceptor = (options, nextCall) =>
      new InterceptingCall(nextCall(options), {
        start: (metadata, listener, next) => {
          if (metadata.get("authorization").length > 0) return next(metadata, listener);
          const withToken = (token: string | undefined) => {
            if (token) metadata.set("authorization", `Bearer ${token}`);
            next(metadata, listener);
          };
          // A refused exchange: the stream goes without a token and the server refuses it.
          this.freshToken().then(withToken, () => withToken(undefined));
        },
      });
    return [this.metadata(opts, undefined), { ...callOptions, interceptors: [interceptor] }];
  }

  private callOptions(opts: CallOpts, unary: boolean): CallOptions {
    const timeoutMs = opts.timeoutMs ?? (unary ? this.defaultTimeoutMs : undefined);
    return timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs };
  }
}

/** The grpc target and channel credentials of a `Steward`. */
function channelSettings(target: string, options: StewardOptions): [string, ChannelCredentials] {
  const { tls, rootCerts, credentials } = options;
  if (rootCerts !== undefined && !Buffer.isBuffer(rootCerts)) {
    throw new TypeError("rootCerts must be a Buffer of PEM, e.g. readFileSync('ca.pem')");
  }
  if (credentials && rootCerts) {
    throw new Error("pass either credentials or rootCerts, not both");
  }
  const wantsTls = credentials !== undefined || rootCerts !== undefined;
  if (tls === false && wantsTls) {
    throw new Error("tls: false contradicts credentials / rootCerts");
  }
  let secure = tls === true || wantsTls;
  const scheme = /^(https?):\/\//i.exec(target)?.[1].toLowerCase();
  if (scheme) {
    const url = URL.canParse(target) ? new URL(target) : undefined;
    const extra = url && (url.username || url.password || url.search || url.hash || url.pathname !== "/");
    if (!url || !url.hostname || extra) {
      throw new Error(`expected ${scheme}://host[:port], got ${JSON.stringify(target)}`);
    }
    // `URL` leaves out the scheme's default port; grpc needs it.
    const given = target;
    target = `${url.hostname}:${url.port || (scheme === "https" ? 443 : 80)}`;
    if (scheme === "http" && secure) {
      throw new Error(`${JSON.stringify(given)} is plaintext (http://); use https:// for TLS`);
    }
    if (scheme === "https") {
      if (tls === false) throw new Error(`tls: false contradicts ${JSON.stringify(given)}`);
      secure = true;
    }
  }
  if (credentials) return [target, credentials];
  if (!secure) return [target, grpcCredentials.createInsecure()];
  return [target, grpcCredentials.createSsl(rootCerts ?? null)];
}

// --- rich errors --------------------------------------------------------------------------------

/** The `google.rpc.Status` of a failed call, with its details decoded. */
export interface ErrorDetails {
  code: number;
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
  /** Details of a type this client does not know. */
  other: Any[];
}

const detailTypes = {
  "google.rpc.ErrorInfo": ["errorInfo", ErrorInfo],
  "google.rpc.BadRequest": ["badRequest", BadRequest],
  "google.rpc.PreconditionFailure": ["preconditionFailure", PreconditionFailure],
  "google.rpc.RetryInfo": ["retryInfo", RetryInfo],
  "google.rpc.QuotaFailure": ["quotaFailure", QuotaFailure],
  "google.rpc.ResourceInfo": ["resourceInfo", ResourceInfo],
  "google.rpc.RequestInfo": ["requestInfo", RequestInfo],
  "google.rpc.DebugInfo": ["debugInfo", DebugInfo],
  "google.rpc.Help": ["help", Help],
  "google.rpc.LocalizedMessage": ["localizedMessage", LocalizedMessage],
} as const;

/**
 * Decodes the `google.rpc.Status` that Steward attaches to errors (the `grpc-status-details-bin`
 * trailer). Without it, returns the call's code and message with no details.
 */
export function errorDetails(error: Partial<ServiceError>): ErrorDetails {
  const raw = error.metadata?.get("grpc-status-details-bin")[0];
  const result: ErrorDetails = {
    code: error.code ?? grpcStatus.UNKNOWN,
    message: error.details ?? error.message ?? "",
    other: [],
  };
  if (raw === undefined) {
    return result;
  }
  const decoded = Status.decode(typeof raw === "string" ? Buffer.from(raw, "base64") : raw);
  result.code = decoded.code;
  result.message = decoded.message;
  for (const detail of decoded.details) {
    const typeName = detail.typeUrl.slice(detail.typeUrl.lastIndexOf("/") + 1);
    const known = detailTypes[typeName as keyof typeof detailTypes];
    if (known === undefined) {
      result.other.push(detail);
      continue;
    }
    const [field, type] = known;
    (result as any)[field] = type.decode(detail.value);
  }
  return result;
}

/** Whether `error` is a gRPC error with the given status code. */
export function isStatus(error: unknown, code: grpcStatus): error is ServiceError {
  return typeof error === "object" && error !== null && (error as ServiceError).code === code;
}

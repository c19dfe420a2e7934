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
  Metadata,
  ServiceError,
  status as grpcStatus,
} from "@grpc/grpc-js";

import { AdminServiceDefinition } from "./gen/steward/admin/v1/admin";
import { OrganizationServiceDefinition } from "./gen/steward/admin/v1/organization";
import { RoleServiceDefinition } from "./gen/steward/admin/v1/role";
import { AuditServiceDefinition } from "./gen/steward/audit/v1/audit";
import { AuthServiceDefinition, SignInRequest, SignInResponse } from "./gen/steward/auth/v1/auth";
import { BillingServiceDefinition } from "./gen/steward/billing/v1/billing";
import { AgentServiceDefinition } from "./gen/steward/commands/v1/agent";
import { CommandServiceDefinition } from "./gen/steward/commands/v1/commands";
import { SystemServiceDefinition } from "./gen/steward/commands/v1/systems";
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

/** Options of a `Steward` connection. */
export interface StewardOptions {
  /** The access token to send with every call. */
  accessToken?: string;
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

  constructor(target: string, options: StewardOptions = {}) {
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
    this.billing = this.service(BillingServiceDefinition);
    this.audit = this.service(AuditServiceDefinition);
    this.commands = this.service(CommandServiceDefinition);
    this.systems = this.service(SystemServiceDefinition);
    this.agents = this.service(AgentServiceDefinition);
  }

  /** The access token sent with every call, if any. */
  get accessToken(): string | undefined {
    return this.token;
  }

  /** Sets (or, with undefined, clears) the access token sent with every call. */
  setAccessToken(token: string | undefined): void {
    this.token = token;
  }

  /**
   * Signs in with email and password. When the answer carries tokens, their access token is used
   * from then on; when it is an MFA challenge, complete it with `auth.verifyMfa` and call
   * `setAccessToken` with the result.
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
        methods[key] = (request: unknown, opts: CallOpts = {}) =>
          new Promise((resolve, reject) => {
            this.client.makeUnaryRequest(
              path,
              serialize,
              deserialize,
              method.requestType.fromPartial(request ?? {}),
              this.metadata(opts),
              this.callOptions(opts, true),
              (error: ServiceError | null, response?: unknown) =>
                error ? reject(error) : resolve(response),
            );
          });
      } else if (!method.requestStream && method.responseStream) {
        methods[key] = (request: unknown, opts: CallOpts = {}) =>
          this.client.makeServerStreamRequest(
            path,
            serialize,
            deserialize,
            method.requestType.fromPartial(request ?? {}),
            this.metadata(opts),
            this.callOptions(opts, false),
          );
      } else if (method.requestStream && method.responseStream) {
        methods[key] = (opts: CallOpts = {}) =>
          this.client.makeBidiStreamRequest(
            path,
            serialize,
            deserialize,
            this.metadata(opts),
            this.callOptions(opts, false),
          );
      }
    }
    return methods as ServiceClient<D>;
  }

  private metadata(opts: CallOpts): Metadata {
    const metadata = opts.metadata?.clone() ?? new Metadata();
    if (this.token && metadata.get("authorization").length === 0) {
      metadata.set("authorization", `Bearer ${this.token}`);
    }
    return metadata;
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

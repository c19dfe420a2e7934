// What both entry points (`@steward/client` for Node, `@steward/client/web` for browsers) export
// besides their client class.

export {
  Administrators,
  DEFAULT_RETRY_POLICY,
  PUBLIC_METHODS,
  StewardBase,
  errorDetails,
  isCode,
  isIdempotent,
  connectionErrorInterceptor,
  retryInterceptor,
} from "./core.js";
export type { CallOptions, ErrorDetails, RetryPolicy, SessionOptions } from "./core.js";
export { Code, ConnectError } from "@connectrpc/connect";
export type { Interceptor, Transport } from "@connectrpc/connect";
export { create } from "@bufbuild/protobuf";
export { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";

export * as adminV1 from "./gen/steward/admin/v1/admin_pb.js";
export * as administratorV1 from "./gen/steward/admin/v1/administrator_pb.js";
export * as organizationV1 from "./gen/steward/admin/v1/organization_pb.js";
export * as roleV1 from "./gen/steward/admin/v1/role_pb.js";
export * as serviceAccountV1 from "./gen/steward/admin/v1/service_account_pb.js";
export * as auditV1 from "./gen/steward/audit/v1/audit_pb.js";
export * as authV1 from "./gen/steward/auth/v1/auth_pb.js";
export * as billingV1 from "./gen/steward/billing/v1/billing_pb.js";
export * as agentV1 from "./gen/steward/commands/v1/agent_pb.js";
export * as commandsV1 from "./gen/steward/commands/v1/commands_pb.js";
export * as systemsV1 from "./gen/steward/commands/v1/systems_pb.js";
export * as errorDetailsV1 from "./gen/google/rpc/error_details_pb.js";

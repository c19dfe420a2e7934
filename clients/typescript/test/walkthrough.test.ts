// The seed's walk-throughs (administrators, commands, an auditor, a CI job with an API key) through
// the generated TypeScript SDK, against the real server: once over plaintext, once over TLS
// (`dev --tls`, the clients trusting its dev CA), one server after the other.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { inspect } from "node:util";

import {
  API_KEY_VAR,
  CA_FILE_VAR,
  SERVER_VAR,
  administratorV1,
  auditV1,
  commandsV1,
  errorDetails,
  Code,
  ConnectError,
  Steward,
  authV1,
  timestampFromDate,
} from "@steward/client";
import { Mode, MODES, OWNER_EMAIL, OWNER_PASSWORD, Server } from "./server";

const { Role } = administratorV1;
const State = administratorV1.Administrator_State;

/** Awaits a call that must fail, and returns its error. */
async function rpcError(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    assert.ok(error instanceof ConnectError, `not a gRPC error: ${error}`);
    return error;
  }
  assert.fail("the call succeeded but was expected to fail");
}

describe("API key settings", () => {
  it("reads the key from the environment and never shows it", () => {
    // Nothing is sent before the first call: these need no server.
    for (const env of [{}, { [API_KEY_VAR]: "" }, { [API_KEY_VAR]: "   " }]) {
      assert.throws(() => Steward.fromEnv(undefined, { env }), new RegExp(API_KEY_VAR));
    }
    assert.throws(() => new Steward("127.0.0.1:50051", { accessToken: "t", apiKey: "stw_k_s" }));
    assert.throws(() => new Steward("127.0.0.1:50051", { apiKey: " " }));
    const ci = Steward.fromEnv(undefined, { env: { [API_KEY_VAR]: "stw_k_very-secret\n" } });
    try {
      assert.deepEqual([ci.target, ci.tls, ci.usesApiKey], ["127.0.0.1:50051", false, true]);
      assert.equal(ci.accessToken, undefined);
      assert.equal(ci.accessTokenExpireTime, undefined);
      // The key shows nowhere: not when the client is inspected, logged or serialized.
      assert.doesNotMatch(inspect(ci, { depth: 10, showHidden: true }), /very-secret/);
      assert.doesNotMatch(JSON.stringify(ci, (_, v) => (typeof v === "bigint" ? 0 : v)) ?? "", /very-secret/);
      ci.setAccessToken("a token"); // a token set by hand replaces the key
      assert.equal(ci.usesApiKey, false);
    } finally {
      ci.close();
    }
    const env = { [API_KEY_VAR]: "stw_k_s", [SERVER_VAR]: "https://steward.example.com" };
    let other = Steward.fromEnv(undefined, { env });
    assert.deepEqual([other.target, other.tls], ["steward.example.com:443", true]);
    other.close();
    other = Steward.fromEnv("http://127.0.0.1:1", { env });
    assert.deepEqual([other.target, other.tls], ["127.0.0.1:1", false]);
    other.close();
  });
});

for (const mode of MODES) {
  describe(`Steward TypeScript SDK against the real server (${mode})`, () => walkthrough(mode));
}

function walkthrough(mode: Mode) {
  let server: Server;
  let owner: Steward;
  let ownerName: string;
  let org: string;

  before(async () => {
    server = await Server.start(mode);
    owner = server.client();
    const accepted = await owner.auth.acceptInvite({
      token: server.ownerInviteToken,
      password: OWNER_PASSWORD,
    });
    const signedIn = await owner.signIn(OWNER_EMAIL, OWNER_PASSWORD);
    assert.equal(signedIn.result.case, "tokens", "owner sign-in returned no tokens");
    const tokens = signedIn.result.value as authV1.TokenSet;
    assert.equal(tokens.tokenType, "Bearer");
    assert.equal(tokens.scope, authV1.TokenScope.FULL);
    assert.ok(tokens.refreshToken && owner.hasRefreshToken);
    ownerName = accepted.administrator;
    const { profile } = await owner.admin.getProfile({});
    assert.equal(profile?.administrator?.name, ownerName);
    org = profile!.organization!.name;
  });

  after(async () => {
    owner?.close();
    await server?.stop();
  });

  /**
   * Owner creates an administrator (a Command Runner unless told otherwise); it accepts its
   * emailed invite and signs in.
   */
  async function inviteAndSignIn(
    address: string,
    password: string,
    roleName = "roles/command-runner",
  ) {
    const { administrator } = await owner.admin.createAdministrator({
      parent: org,
      administrator: { email: address, roleName },
      requestId: randomUUID(),
    });
    const token = await server.inviteToken(address);
    const client = server.client();
    await client.auth.acceptInvite({ token, password });
    await client.signIn(address, password);
    return { administrator: administrator!, client };
  }

  if (mode === "tls") {
    it("refuses a server whose certificate it does not trust, promptly", async () => {
      // Node's default roots, which do not include the dev CA.
      const untrusted = new Steward(server.url);
      const started = Date.now();
      try {
        const err = await rpcError(untrusted.admin.getProfile({}, { timeoutMs: 10_000 }));
        assert.equal(err.code, Code.Unavailable, err.message);
        assert.match(err.rawMessage, /certificate/i);
        assert.ok(Date.now() - started < 5_000, `took ${Date.now() - started} ms to fail`);
      } finally {
        untrusted.close();
      }
    });
  }

  it("refuses unauthenticated calls", async () => {
    const anonymous = server.client();
    try {
      let err = await rpcError(anonymous.admin.getProfile({}));
      assert.equal(err.code, Code.Unauthenticated);
      anonymous.setAccessToken("not-a-jwt");
      err = await rpcError(anonymous.admin.getProfile({}));
      assert.equal(err.code, Code.Unauthenticated);
    } finally {
      anonymous.close();
    }
  });

  it("walks through creating, editing and deleting administrators", async () => {
    // Who am I, and which organization?
    const { profile } = await owner.admin.getProfile({});
    assert.equal(profile?.administrator?.email, OWNER_EMAIL);
    assert.equal(profile?.administrator?.role, Role.ADMINISTRATOR);
    assert.equal(profile?.administrator?.billing, true);
    assert.equal(profile?.administrator?.state, State.ACTIVE);
    assert.match(profile!.organization!.name, /^organizations\//);
    assert.ok(profile!.organization!.displayName);

    // Create a Command Runner; a retry with the same requestId creates nothing new.
    const request = {
      parent: org,
      administrator: { email: "helpdesk@example.com", role: Role.COMMAND_RUNNER },
      requestId: randomUUID(),
    };
    const runner = (await owner.admin.createAdministrator(request)).administrator!;
    assert.ok(runner.name.startsWith(`${org}/administrators/`), runner.name);
    assert.equal(runner.state, State.INVITED);
    assert.equal(runner.role, Role.COMMAND_RUNNER);
    assert.equal(runner.invitedBy, ownerName);
    assert.equal((await owner.admin.createAdministrator(request)).administrator?.name, runner.name);

    // The invite email carries the set-password link; a weak password is refused by field.
    const token = await server.inviteToken("helpdesk@example.com");
    const helpdesk = server.client();
    try {
      let err = await rpcError(helpdesk.auth.acceptInvite({ token, password: "short" }));
      assert.equal(err.code, Code.InvalidArgument);
      const bad = errorDetails(err).badRequest;
      assert.deepEqual(bad?.fieldViolations.map((v) => v.field), ["password"]);

      const password = "helpdesk runs the weekly reports 7!";
      const accepted = await helpdesk.auth.acceptInvite({ token, password });
      assert.equal(accepted.administrator, runner.name);
      await helpdesk.signIn("helpdesk@example.com", password);
      const own = (await helpdesk.admin.getProfile({})).profile!;
      assert.equal(own.administrator?.name, runner.name);
      assert.equal(own.administrator?.role, Role.COMMAND_RUNNER);

      // A Command Runner may not manage administrators.
      err = await rpcError(helpdesk.admin.listAdministrators({ parent: org }));
      assert.equal(err.code, Code.PermissionDenied);
      assert.equal(errorDetails(err).errorInfo?.reason, "ROLE_REQUIRED");
      assert.match(err.rawMessage, /administrators\.read/);
      // Its role says what it holds; the refusal above names the permission it lacks.
      const role = (await helpdesk.roles.getRole({ name: "roles/command-runner" })).role!;
      assert.ok(role.permissions.includes("commands.run"));
      assert.ok(!role.permissions.includes("administrators.read"));
    } finally {
      helpdesk.close();
    }

    let listed = await owner.admin.listAdministrators({ parent: org });
    assert.deepEqual(
      listed.administrators.map((a) => a.email),
      ["helpdesk@example.com", OWNER_EMAIL],
    );
    assert.equal(listed.totalSize, 2);
    assert.ok(listed.administrators.every((a) => a.state === State.ACTIVE));

    // Edit with a field mask: only mfaRequired changes, whatsNew (not in the mask) does not.
    const current = (await owner.admin.getAdministrator({ name: runner.name })).administrator!;
    const updated = (
      await owner.admin.updateAdministrator({
        administrator: { name: runner.name, mfaRequired: true, whatsNew: true, etag: current.etag },
        updateMask: { paths: ["mfa_required"] },
      })
    ).administrator!;
    assert.equal(updated.mfaRequired, true);
    assert.equal(updated.whatsNew, false);
    assert.equal(updated.role, Role.COMMAND_RUNNER);
    assert.ok(updated.etag && updated.etag !== current.etag);
    // The old etag no longer matches: the update is refused and changes nothing.
    let err = await rpcError(
      owner.admin.updateAdministrator({
        administrator: { name: runner.name, billing: true, etag: current.etag },
        updateMask: { paths: ["billing"] },
      }),
    );
    assert.equal(err.code, Code.Aborted);

    // The confirmation window: validateOnly answers what would be deleted, deletes nothing.
    const preview = await owner.admin.batchDeleteAdministrators({
      parent: org,
      names: [runner.name],
      validateOnly: true,
    });
    assert.deepEqual(preview.administrators.map((a) => a.name), [runner.name]);
    await owner.admin.getAdministrator({ name: runner.name });

    // An administrator can never delete itself (and here it is the last one anyway).
    for (const validateOnly of [true, false]) {
      err = await rpcError(
        owner.admin.batchDeleteAdministrators({ parent: org, names: [ownerName], validateOnly }),
      );
      assert.equal(err.code, Code.FailedPrecondition);
      const failure = errorDetails(err).preconditionFailure;
      assert.ok(failure, "no google.rpc.PreconditionFailure detail");
      assert.ok(
        failure.violations.some((v) => v.type === "SELF_DELETE" && v.subject === ownerName),
        JSON.stringify(failure.violations),
      );
    }

    // Delete the Command Runner: it is gone and can no longer sign in.
    const deleted = await owner.admin.batchDeleteAdministrators({ parent: org, names: [runner.name] });
    assert.deepEqual(deleted.administrators.map((a) => a.name), [runner.name]);
    err = await rpcError(owner.admin.getAdministrator({ name: runner.name }));
    assert.equal(err.code, Code.NotFound);
    listed = await owner.admin.listAdministrators({ parent: org });
    assert.deepEqual(listed.administrators.map((a) => a.name), [ownerName]);
    const gone = server.client();
    try {
      err = await rpcError(gone.signIn("helpdesk@example.com", "helpdesk runs the weekly reports 7!"));
      assert.equal(err.code, Code.Unauthenticated);
    } finally {
      gone.close();
    }
  });

  it("lets a Command Runner see and run only the commands granted to it", async () => {
    // A system to run on: a connect key, and an agent registering with it (no token).
    const key = (
      await owner.systems.createConnectKey({ parent: org, connectKey: { displayName: "sdk test" } })
    ).connectKey!;
    assert.ok(key.key);
    const agent = server.client();
    const system = (
      await agent.agents.registerAgent({
        connectKey: key.key,
        hostname: "web-1",
        os: "linux",
        agentVersion: "0.0.0-sdk-test",
      })
    ).system!;
    agent.close();
    assert.ok(system.name.startsWith(`${org}/systems/`), system.name);

    const createCommand = async (displayName: string, script: string) =>
      (
        await owner.commands.createCommand({
          parent: org,
          command: {
            displayName,
            script,
            interpreter: commandsV1.Interpreter.SH,
            timeout: { seconds: 60n },
            targetSystems: [system.name],
          },
          requestId: randomUUID(),
        })
      ).command!;
    const report = await createCommand("disk usage report", "df -h");
    const restart = await createCommand("restart web server", "systemctl restart nginx");
    assert.ok(report.name.startsWith(`${org}/commands/`), report.name);

    const { administrator: runner, client: ops } = await inviteAndSignIn(
      "ops@example.com",
      "ops team keeps disks tidy 2024!",
    );
    try {
      const grant = (
        await owner.commands.createGrant({ parent: report.name, grant: { grantee: runner.name } })
      ).grant!;
      assert.ok(grant.name.startsWith(`${report.name}/grants/`), grant.name);
      assert.equal(grant.grantor, ownerName);

      // The runner sees exactly the command granted to it.
      let seen = await ops.commands.listCommands({ parent: org });
      assert.deepEqual(seen.commands.map((c) => c.name), [report.name]);
      let err = await rpcError(ops.commands.getCommand({ name: restart.name }));
      assert.equal(err.code, Code.PermissionDenied);

      const { decision } = await ops.commands.checkAccess({
        command: report.name,
        action: commandsV1.Action.RUN,
      });
      assert.equal(decision?.allowed, true);
      assert.equal(decision?.reason, commandsV1.DecisionReason.GRANT);
      assert.equal(decision?.grantor, ownerName);

      // It may run the granted command, and nothing else.
      const run = (await ops.commands.runCommand({ command: report.name, requestId: randomUUID() })).run!;
      assert.equal(run.runner, runner.name);
      assert.equal(run.command, report.name);
      assert.deepEqual(run.systems, [system.name]);
      assert.equal(run.state, commandsV1.RunState.QUEUED);
      err = await rpcError(ops.commands.runCommand({ command: restart.name }));
      assert.equal(err.code, Code.PermissionDenied);

      const runs = await ops.commands.listRuns({ parent: org });
      assert.deepEqual(runs.runs.map((r) => r.name), [run.name]);

      // Revoked: never honoured once DeleteGrant has returned.
      await owner.commands.deleteGrant({ name: grant.name });
      seen = await ops.commands.listCommands({ parent: org });
      assert.deepEqual(seen.commands, []);
      err = await rpcError(ops.commands.runCommand({ command: report.name }));
      assert.equal(err.code, Code.PermissionDenied);
    } finally {
      ops.close();
    }
  });

  it("lets a Read Only auditor read everything and change nothing", async () => {
    const script = {
      displayName: "last logins",
      script: "last -n 20",
      interpreter: commandsV1.Interpreter.SH,
    };
    const command = (
      await owner.commands.createCommand({ parent: org, command: script, requestId: randomUUID() })
    ).command!;

    // The owner invites an auditor by role name; it accepts its emailed invite and signs in.
    const { administrator: auditor, client } = await inviteAndSignIn(
      "auditor@example.com",
      "auditors read every line twice 9!",
      "roles/read-only",
    );
    assert.equal(auditor.role, Role.READ_ONLY);
    assert.equal(auditor.roleName, "roles/read-only");
    try {
      // It reads everything: administrators, commands, roles, and the audit log, which recorded
      // the owner creating it.
      const listed = await client.admin.listAdministrators({ parent: org });
      const names = listed.administrators.map((a) => a.name);
      assert.ok(names.includes(ownerName) && names.includes(auditor.name), names.join());
      const seen = await client.commands.listCommands({ parent: org });
      assert.ok(seen.commands.some((c) => c.name === command.name));
      const { roles } = await client.roles.listRoles({});
      const readOnly = roles.find((r) => r.name === "roles/read-only");
      assert.ok(readOnly?.permissions.includes("audit.read"));
      const { auditEvents } = await client.audit.listAuditEvents({
        parent: org,
        filter: `target = "${auditor.name}"`,
      });
      assert.ok(
        auditEvents.some(
          (e) =>
            e.actor === ownerName &&
            e.action === "/steward.admin.v1.AdminService/CreateAdministrator" &&
            e.result === auditV1.AuditEvent_Result.ALLOWED,
        ),
        JSON.stringify(auditEvents, (_, v) => (typeof v === "bigint" ? String(v) : v)),
      );

      // It changes nothing and runs nothing.
      let err = await rpcError(
        client.commands.runCommand({ command: command.name, requestId: randomUUID() }),
      );
      assert.equal(err.code, Code.PermissionDenied);
      assert.match(err.rawMessage, /commands\.run/);
      err = await rpcError(
        client.commands.createCommand({ parent: org, command: script, requestId: randomUUID() }),
      );
      assert.equal(err.code, Code.PermissionDenied);
      // Nor may it see the payment card: that takes billing.
      err = await rpcError(client.billing.getPaymentCard({ name: `${org}/paymentCard` }));
      assert.equal(err.code, Code.PermissionDenied);
      assert.equal(errorDetails(err).errorInfo?.reason, "BILLING_REQUIRED");
    } finally {
      client.close();
    }
  });

  it("lets a CI job act as a Manager service account with an API key, until the key is deleted", async () => {
    const { serviceAccount: account } = await owner.serviceAccounts.createServiceAccount({
      parent: org,
      serviceAccount: { displayName: "ci", roleName: "roles/manager" },
    });
    assert.ok(account!.name.startsWith(`${org}/serviceAccounts/`), account!.name);
    assert.equal(account!.role, Role.MANAGER);
    assert.equal(account!.roleName, "roles/manager");
    assert.equal(account!.creator, ownerName);
    const { serviceAccounts } = await owner.serviceAccounts.listServiceAccounts({ parent: org });
    assert.ok(serviceAccounts.some((a) => a.name === account!.name));

    const created = await owner.serviceAccounts.createServiceAccountKey({
      parent: account!.name,
      key: { expireTime: timestampFromDate(new Date(Date.now() + 30 * 86_400_000)) },
    });
    const { key, apiKey } = created;
    assert.ok(key!.name.startsWith(`${account!.name}/keys/`), key!.name);
    assert.match(apiKey, /^stw_/);
    assert.equal(key!.lastUsedTime, undefined);

    // The job's environment, as a CI system would set it.
    const env: Record<string, string> = { [API_KEY_VAR]: apiKey, [SERVER_VAR]: server.url };
    if (mode === "tls") {
      const caFile = join(server.dataDir, "ci-ca.pem");
      writeFileSync(caFile, server.caPem!);
      env[CA_FILE_VAR] = caFile;
    }
    const ci = Steward.fromEnv(undefined, { env, defaultTimeoutMs: 30_000 });
    try {
      assert.equal(ci.tls, mode === "tls");
      assert.doesNotMatch(inspect(ci, { depth: 10, showHidden: true }), new RegExp(apiKey));
      assert.equal(ci.accessToken, undefined); // exchanged on the first call, not before

      // It works with the Manager's permissions: commands, connect keys.
      await ci.commands.listCommands({ parent: org });
      let token = ci.accessToken;
      assert.ok(token);
      assert.ok(ci.accessTokenExpireTime!.getTime() > Date.now());
      const { connectKey } = await ci.systems.createConnectKey({
        parent: org,
        connectKey: { displayName: "from ci" },
      });
      assert.ok(connectKey?.key);
      assert.equal(ci.accessToken, token); // still fresh: not exchanged again

      // Not administrators, and it has no profile.
      let err = await rpcError(ci.admin.listAdministrators({ parent: org }));
      assert.equal(err.code, Code.PermissionDenied);
      assert.equal(errorDetails(err).errorInfo?.reason, "ROLE_REQUIRED");
      err = await rpcError(ci.admin.getProfile({}));
      assert.equal(err.code, Code.PermissionDenied);
      assert.equal(errorDetails(err).errorInfo?.reason, "PEOPLE_ONLY");

      // Audited as itself; the key records its use.
      const { auditEvents } = await owner.audit.listAuditEvents({
        parent: org,
        filter: `actor = "${account!.name}"`,
      });
      assert.ok(auditEvents.length > 0, "the job's calls are audited as the service account");
      const { keys } = await owner.serviceAccounts.listServiceAccountKeys({ parent: account!.name });
      assert.deepEqual(keys.map((k) => k.name), [key!.name]);
      assert.ok(keys[0].lastUsedTime);

      // Shortly before the token expires, the next call trades the key again first, and
      // concurrent calls share one exchange.
      const forceExpiry = (ms: number) => ((ci as any).tokenExpiryMs = Date.now() + ms);
      let exchanges = 0;
      const rawAuth = (ci as any).rawAuth;
      const exchange = rawAuth.exchangeApiKey;
      rawAuth.exchangeApiKey = (...args: unknown[]) => (exchanges++, exchange(...args));
      forceExpiry(1_000);
      await Promise.all([
        ci.commands.listCommands({ parent: org }),
        ci.commands.listCommands({ parent: org }),
      ]);
      assert.equal(exchanges, 1);
      assert.ok(ci.accessToken && ci.accessToken !== token);
      assert.ok(ci.accessTokenExpireTime!.getTime() > Date.now() + 60_000);
      token = ci.accessToken;
      // A stream too: it starts once the key is exchanged, and is authenticated (the run does not
      // exist, so the server answers NOT_FOUND rather than UNAUTHENTICATED).
      forceExpiry(1_000);
      err = await rpcError(
        (async () => {
          for await (const _ of ci.commands.watchRun({ name: `${org}/runs/nonexistent` })) {
            // nothing: the run does not exist
          }
        })(),
      );
      assert.equal(err.code, Code.NotFound, err.message);
      assert.equal(exchanges, 2);
      assert.ok(ci.accessToken !== token);
      token = ci.accessToken;

      // The owner deletes the key: the job's very next call fails.
      await owner.serviceAccounts.deleteServiceAccountKey({ name: key!.name });
      err = await rpcError(ci.commands.listCommands({ parent: org }));
      assert.ok([Code.PermissionDenied, Code.Unauthenticated].includes(err.code), err.message);
      if (err.code === Code.PermissionDenied) {
        assert.equal(errorDetails(err).errorInfo?.reason, "CALLER_DELETED");
      }
      // Its token is due: the exchange is refused, the token (not expired yet) still used, and refused.
      forceExpiry(1_000);
      err = await rpcError(ci.commands.listCommands({ parent: org }));
      assert.ok([Code.PermissionDenied, Code.Unauthenticated].includes(err.code), err.message);
      // Its token expired: the refused exchange fails the call.
      forceExpiry(-1_000);
      err = await rpcError(ci.commands.listCommands({ parent: org }));
      assert.equal(err.code, Code.Unauthenticated);
      assert.ok(!err.message.includes(apiKey));
      assert.equal(ci.accessToken, token); // the refused exchanges changed nothing
    } finally {
      ci.close();
    }

    const again = server.client();
    try {
      const err = await rpcError(again.signInWithApiKey(apiKey));
      assert.equal(err.code, Code.Unauthenticated);
      assert.equal(again.usesApiKey, false);
      assert.equal(again.accessToken, undefined);
    } finally {
      again.close();
    }

    await owner.serviceAccounts.deleteServiceAccount({ name: account!.name });
  });
}

// gRPC-Web: the seed's first steps through `@steward/client/web` (Connect's gRPC-Web transport
// over Node's fetch, HTTP/1.1) against the real server's public port, which allows one origin.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";

import { Code, ConnectError, StewardWeb, errorDetails } from "@steward/client/web";
import { OWNER_EMAIL, OWNER_PASSWORD, Server } from "./server";

const ORIGIN = "http://console.example.com";

describe("gRPC-Web through @steward/client/web (plaintext)", () => {
  let server: Server;
  let baseUrl: string;

  before(async () => {
    server = await Server.start("plaintext", { STEWARD_SERVER__CORS_ALLOWED_ORIGINS: JSON.stringify([ORIGIN]) });
    baseUrl = `http://${server.target}`;
  });

  after(async () => {
    await server?.stop();
  });

  it("loads nothing of Node's gRPC transport (@steward/client/web is for browsers)", () => {
    const script = `require("@steward/client/web");
      const node = Object.keys(require.cache).filter((m) => /connect-node|@steward[\\/]client[\\/]dist[\\/]src[\\/]index/.test(m));
      process.stdout.write(JSON.stringify(node));`;
    const loaded = JSON.parse(execFileSync(process.execPath, ["-e", script], { cwd: __dirname, encoding: "utf8" }));
    assert.deepEqual(loaded, []);
  });

  it("lets a browser page of the allowed origin call (CORS preflight)", async () => {
    const preflight = await fetch(`${baseUrl}/steward.admin.v1.AdminService/GetProfile`, {
      method: "OPTIONS",
      headers: {
        origin: ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-grpc-web",
      },
    });
    assert.ok(preflight.ok, `preflight: HTTP ${preflight.status}`);
    assert.equal(preflight.headers.get("access-control-allow-origin"), ORIGIN);
    const other = await fetch(`${baseUrl}/steward.admin.v1.AdminService/GetProfile`, {
      method: "OPTIONS",
      headers: { origin: "http://elsewhere.example.com", "access-control-request-method": "POST" },
    });
    assert.notEqual(other.headers.get("access-control-allow-origin"), "http://elsewhere.example.com");
  });

  it("walks through the seed's first steps, and a Command Runner is refused", async () => {
    // Every call as a browser of the allowed origin sends it; each answer must allow it.
    const origins: (string | null)[] = [];
    const browserFetch: typeof fetch = async (input, init) => {
      const headers = new Headers(init?.headers);
      headers.set("origin", ORIGIN);
      const response = await fetch(input, { ...init, headers });
      origins.push(response.headers.get("access-control-allow-origin"));
      return response;
    };
    const owner = new StewardWeb(baseUrl, { fetch: browserFetch, defaultTimeoutMs: 30_000 });
    const accepted = await owner.auth.acceptInvite({ token: server.ownerInviteToken, password: OWNER_PASSWORD });
    await owner.signIn(OWNER_EMAIL, OWNER_PASSWORD);
    assert.ok(owner.hasRefreshToken);
    const { profile } = await owner.admin.getProfile({});
    assert.equal(profile?.administrator?.name, accepted.administrator);
    const org = profile!.organization!.name;
    const names: string[] = [];
    for await (const a of owner.administrators.list({ parent: org })) names.push(a.email);
    assert.deepEqual(names, [OWNER_EMAIL]);

    const { administrator: runner } = await owner.admin.createAdministrator({
      parent: org,
      administrator: { email: "web-runner@example.com", roleName: "roles/command-runner" },
      requestId: randomUUID(),
    });
    const helpdesk = new StewardWeb(baseUrl, { fetch: browserFetch, defaultTimeoutMs: 30_000 });
    const password = "web runners fetch their commands 3!";
    await helpdesk.auth.acceptInvite({ token: await server.inviteToken("web-runner@example.com"), password });
    await helpdesk.signIn("web-runner@example.com", password);
    assert.equal((await helpdesk.admin.getProfile({})).profile?.administrator?.name, runner!.name);
    const err = await helpdesk.admin.listAdministrators({ parent: org }).then(
      () => assert.fail("a Command Runner listed administrators"),
      (e) => ConnectError.from(e),
    );
    assert.equal(err.code, Code.PermissionDenied, err.message);
    assert.equal(errorDetails(err).errorInfo?.reason, "ROLE_REQUIRED");
    assert.ok(origins.length >= 8 && origins.every((o) => o === ORIGIN), JSON.stringify(origins));
  });
});

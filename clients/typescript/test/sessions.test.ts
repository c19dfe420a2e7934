// Sessions that outlive their access tokens, pages, and retries, against a real server whose access
// tokens live a few seconds.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer, Server as NetServer, Socket, connect } from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { Code, ConnectError, Steward } from "@steward/client";
import { OWNER_EMAIL, OWNER_PASSWORD, Server } from "./server";

// Short enough to expire several times in a test, long enough for a sign-in on a busy machine; no
// leeway, so that an expired token is refused at once.
const TTL_S = 3;
export const SHORT_TOKENS = {
  STEWARD_AUTH__ACCESS_TOKEN_TTL_SECS: String(TTL_S),
  STEWARD_AUTH__LEEWAY_SECS: "0",
};

describe("sessions, pages and retries (plaintext, access tokens living 3 s)", () => {
  let server: Server;
  let org: string;

  before(async () => {
    server = await Server.start("plaintext", SHORT_TOKENS);
    const owner = server.client();
    try {
      await owner.auth.acceptInvite({ token: server.ownerInviteToken, password: OWNER_PASSWORD });
      await owner.signIn(OWNER_EMAIL, OWNER_PASSWORD);
      org = (await owner.admin.getProfile({})).profile!.organization!.name;
    } finally {
      owner.close();
    }
  });

  after(async () => {
    await server?.stop();
  });

  it("keeps calling for three token lifetimes: refreshed before expiry, no call fails", async () => {
    const client = server.client();
    try {
      await client.signIn(OWNER_EMAIL, OWNER_PASSWORD);
      assert.ok(client.hasRefreshToken);
      const lifetime = client.accessTokenExpireTime!.getTime() - Date.now();
      assert.ok(lifetime > 0 && lifetime <= (TTL_S + 1) * 1000, `${lifetime} ms`);
      const tokens: string[] = [];
      let calls = 0;
      const deadline = Date.now() + 3 * TTL_S * 1000;
      while (Date.now() < deadline) {
        // Two at once: they share one refresh.
        await Promise.all([client.admin.getProfile({}), client.admin.listAdministrators({ parent: org })]);
        calls += 2;
        if (!tokens.includes(client.accessToken!)) tokens.push(client.accessToken!);
        await sleep(100);
      }
      assert.ok(tokens.length >= 3, `${tokens.length} access tokens over ${calls} calls`);
      // The first token has expired by now: the server refuses it.
      const stale = server.client(tokens[0]);
      try {
        const err = await stale.admin.getProfile({}).then(
          () => assert.fail("an expired token was accepted"),
          (e) => ConnectError.from(e),
        );
        assert.equal(err.code, Code.Unauthenticated);
      } finally {
        stale.close();
      }
    } finally {
      client.close();
    }
  });

  it("refreshes a refused token and retries the call once", async () => {
    const client = server.client();
    try {
      await client.signIn(OWNER_EMAIL, OWNER_PASSWORD);
      const token = client.accessToken;
      // The client believes its token lives on; the server refuses it once it expired.
      const expiry = (client as any).tokenExpiryMs as number;
      (client as any).tokenExpiryMs = Date.now() + 3_600_000;
      await sleep(Math.max(0, expiry - Date.now()) + 500);
      await client.admin.getProfile({});
      assert.notEqual(client.accessToken, token);
      // A server stream too: WatchRun of a run that does not exist is NOT_FOUND, not UNAUTHENTICATED.
      const second = client.accessToken;
      const secondExpiry = (client as any).tokenExpiryMs as number;
      (client as any).tokenExpiryMs = Date.now() + 3_600_000;
      await sleep(Math.max(0, secondExpiry - Date.now()) + 500);
      const err = await (async () => {
        for await (const _ of client.commands.watchRun({ name: `${org}/runs/none` })) {
          // nothing
        }
      })().then(
        () => assert.fail("watched a run that does not exist"),
        (e) => ConnectError.from(e),
      );
      assert.equal(err.code, Code.NotFound, err.message);
      assert.notEqual(client.accessToken, second);
    } finally {
      client.close();
    }
  });

  it("iterates every page of a list", async () => {
    const client = server.client();
    try {
      await client.signIn(OWNER_EMAIL, OWNER_PASSWORD);
      const emails = Array.from({ length: 12 }, (_, i) => `ts-pager-${String(i).padStart(2, "0")}@example.com`);
      for (const email of emails) {
        await client.admin.createAdministrator({
          parent: org,
          administrator: { email, roleName: "roles/read-only" },
          requestId: randomUUID(),
        });
      }
      const pageTokens: string[] = [];
      const list = client.admin.listAdministrators;
      (client.admin as any).listAdministrators = (request: any, options: any) => {
        pageTokens.push(request.pageToken);
        return list(request, options);
      };
      const listed: string[] = [];
      for await (const a of client.administrators.list({ parent: org, pageSize: 5 })) listed.push(a.email);
      assert.deepEqual(listed.filter((e) => e.startsWith("ts-pager-")), emails);
      assert.ok(listed.includes(OWNER_EMAIL));
      assert.equal(new Set(listed).size, emails.length + 1);
      assert.equal(pageTokens.length, 3);
      assert.equal(pageTokens[0], "");
      assert.ok(pageTokens.slice(1).every((t) => t), JSON.stringify(pageTokens));
      // The generic form.
      const readOnly: string[] = [];
      for await (const a of client.paginate(list, { parent: org, pageSize: 4, filter: "role = ROLE_READ_ONLY" })) {
        readOnly.push((a as { email: string }).email);
      }
      assert.deepEqual(readOnly.sort(), emails);
    } finally {
      client.close();
    }
  });

  it("retries idempotent calls when the server is unavailable, and only those", async () => {
    const owner = server.client();
    await owner.signIn(OWNER_EMAIL, OWNER_PASSWORD);
    const token = owner.accessToken!;
    owner.close();
    const proxy = await FlakyProxy.start(server.target);
    try {
      // The first connections are reset: UNAVAILABLE, then retried (0.2 s, 0.4 s... apart).
      proxy.refuse = 2;
      let client = new Steward(proxy.target, { accessToken: token, defaultTimeoutMs: 30_000 });
      try {
        const { profile } = await client.admin.getProfile({});
        assert.equal(profile?.administrator?.email, OWNER_EMAIL);
        assert.equal(proxy.refused, 2);
      } finally {
        client.close();
      }
      // Without retries, the same outage fails the call.
      proxy.refuse = 2;
      proxy.refused = 0;
      client = new Steward(proxy.target, { accessToken: token, retry: false, defaultTimeoutMs: 30_000 });
      try {
        const err = await client.admin.getProfile({}).then(
          () => assert.fail("succeeded through a reset connection"),
          (e) => ConnectError.from(e),
        );
        assert.equal(err.code, Code.Unavailable, err.message);
      } finally {
        client.close();
      }
      // Nor is a call with side effects retried.
      proxy.refuse = 2;
      proxy.refused = 0;
      client = new Steward(proxy.target, { accessToken: token, defaultTimeoutMs: 30_000 });
      try {
        const err = await client.admin
          .createAdministrator({ parent: org, administrator: { email: "never@example.com", roleName: "roles/read-only" } })
          .then(
            () => assert.fail("succeeded through a reset connection"),
            (e) => ConnectError.from(e),
          );
        assert.equal(err.code, Code.Unavailable, err.message);
        assert.equal(proxy.refused, 1);
      } finally {
        client.close();
      }
    } finally {
      proxy.close();
    }
  });
});

/** A TCP proxy in front of the server whose next `refuse` connections are reset at once. */
class FlakyProxy {
  refuse = 0;
  refused = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly listener: NetServer,
    readonly target: string,
  ) {}

  static async start(upstream: string): Promise<FlakyProxy> {
    const port = Number(upstream.slice(upstream.lastIndexOf(":") + 1));
    const host = upstream.slice(0, upstream.lastIndexOf(":"));
    let proxy: FlakyProxy | undefined;
    const listener = createServer((socket) => {
      const p = proxy!;
      if (p.refuse > 0) {
        p.refuse--;
        p.refused++;
        socket.resetAndDestroy();
        return;
      }
      const server = connect(port, host);
      for (const s of [socket, server]) {
        p.sockets.add(s);
        s.on("close", () => p.sockets.delete(s));
        s.on("error", () => undefined);
      }
      socket.pipe(server).pipe(socket);
    });
    await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
    const address = listener.address() as { port: number };
    proxy = new FlakyProxy(listener, `127.0.0.1:${address.port}`);
    return proxy;
  }

  close(): void {
    this.listener.close();
    for (const s of this.sockets) s.destroy();
  }
}

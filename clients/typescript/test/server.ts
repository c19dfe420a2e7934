// Starts the real steward-server binary in dev mode for the SDK's end-to-end tests.
//
// The tests import the SDK as installed: `@steward/client`, which run-tests.sh installs from the
// `npm pack` tarball into a throwaway project. The binary is STEWARD_SERVER_BIN (default:
// target/debug/steward-server of this repository, resolved from this file's location). Each server is fresh, on an ephemeral port with its own data
// directory; in "tls" mode it runs `dev --tls` and its clients trust the dev CA it generated.

import { ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { Steward, StewardOptions } from "@steward/client";

export type Mode = "plaintext" | "tls";
export const MODES: readonly Mode[] = ["plaintext", "tls"];

export const OWNER_EMAIL = "owner@example.com";
export const OWNER_PASSWORD = "correct horse battery staple 42!";

// dist/test/server.js -> the repository root is four levels up.
const REPO = resolve(__dirname, "..", "..", "..", "..");

export function serverBin(): string {
  const configured = process.env.STEWARD_SERVER_BIN;
  let path = configured ? configured : join(REPO, "target", "debug", "steward-server");
  if (!isAbsolute(path)) path = resolve(process.cwd(), path);
  if (!existsSync(path)) {
    throw new Error(
      `steward-server binary not found at ${path}: build it with ` +
        "`cargo build -p steward-server` or set STEWARD_SERVER_BIN",
    );
  }
  return path;
}

// Servers still running: killed when this process exits, however it gets there.
const running = new Set<ChildProcess>();
process.once("exit", () => running.forEach((child) => child.kill("SIGKILL")));
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(signal, () => {
    running.forEach((child) => child.kill("SIGKILL"));
    // Then die of the signal as without this handler, unless someone else handles it.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

export class Server {
  private constructor(
    readonly mode: Mode,
    /** host:port */
    readonly target: string,
    readonly dataDir: string,
    readonly logPath: string,
    readonly ownerInviteToken: string,
    private readonly child: ChildProcess,
    /** The dev CA, in TLS mode. */
    readonly caPem?: Buffer,
  ) {}

  /** Starts `steward-server dev`; `config` adds STEWARD_* variables (e.g. a short token lifetime). */
  static async start(mode: Mode = "plaintext", config: Record<string, string> = {}): Promise<Server> {
    const tls = mode === "tls";
    const binary = serverBin();
    const dataDir = mkdtempSync(join(tmpdir(), `steward-ts-${mode}-`));
    const logPath = `${dataDir}.log`;
    // The server reads every STEWARD_* variable as configuration and refuses unknown keys.
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: "1", RUST_LOG: process.env.RUST_LOG ?? "info" };
    delete env.STEWARD_SERVER_BIN;
    Object.assign(env, config);
    const log = openSync(logPath, "w");
    const child = spawn(
      binary,
      ["dev", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--owner-email", OWNER_EMAIL,
        ...(tls ? ["--tls"] : [])],
      {
        stdio: ["ignore", log, log],
        env,
      },
    );
    closeSync(log);
    let exited: number | null | undefined;
    running.add(child);
    child.on("exit", (code) => {
      exited = code;
      running.delete(child);
    });
    const deadline = Date.now() + 90_000;
    for (;;) {
      const text = readFileSync(logPath, "utf8");
      // Each pattern ends with what follows the value on its line: never half a line.
      const listening = /all services listening on ([^\s,]+:\d+)[\s,]/.exec(text);
      const link = /set-password\?token=([^\s"'<>&]+)\s/.exec(text);
      const ca = /TLS on; clients trust the dev CA: (\S+)\n/.exec(text);
      if (listening && link && (ca || !tls)) {
        const caPem = ca ? readFileSync(ca[1]) : undefined;
        return new Server(mode, listening[1], dataDir, logPath, link[1], child, caPem);
      }
      const failed = /could not bootstrap[^\n]*/.exec(text);
      if (failed || exited !== undefined || Date.now() > deadline) {
        child.kill("SIGKILL");
        const tail = text.split("\n").slice(-30).join("\n");
        throw new Error(
          `steward-server (${mode}) did not start (${failed ? failed[0] : `exit ${exited}`}); ` +
            `output in ${logPath}:\n${tail}`,
        );
      }
      await sleep(50);
    }
  }

  /**
   * The address for clients: `host:port`, or in TLS mode `https://localhost:port` (the dev
   * certificate names localhost; an IP address would make Node warn that it is no TLS server name).
   */
  get url(): string {
    const port = this.target.slice(this.target.lastIndexOf(":") + 1);
    return this.mode === "tls" ? `https://localhost:${port}` : this.target;
  }

  /** A new connection, optionally with an access token; in TLS mode it trusts the dev CA. */
  client(accessToken?: string, options: StewardOptions = {}): Steward {
    return new Steward(this.url, { rootCerts: this.caPem, accessToken, defaultTimeoutMs: 30_000, ...options });
  }

  /** The token of the newest invite email sent to `address` (a .eml file under mail/). */
  async inviteToken(address: string, timeoutMs = 20_000): Promise<string> {
    const mailDir = join(this.dataDir, "mail");
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let newest: { mtime: bigint; name: string; text: string } | undefined;
      for (const name of existsSync(mailDir) ? readdirSync(mailDir) : []) {
        if (!name.endsWith(".eml")) continue;
        const path = join(mailDir, name);
        const text = readFileSync(path, "utf8");
        const to = /^To:(.*(?:\r?\n[ \t].*)*)/im.exec(text.split(/\r?\n\r?\n/)[0]);
        if (!to || !to[1].toLowerCase().includes(address.toLowerCase())) continue;
        const mtime = statSync(path, { bigint: true }).mtimeNs;
        if (!newest || mtime > newest.mtime || (mtime === newest.mtime && name > newest.name)) {
          newest = { mtime, name, text };
        }
      }
      const token = newest && /token=([A-Za-z0-9_\-.~%]+)/.exec(newest.text);
      if (token) return token[1];
      if (Date.now() > deadline) throw new Error(`no invite email for ${address} in ${mailDir}`);
      await sleep(100);
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((done) => this.child.once("exit", done));
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 15_000);
    await exited;
    clearTimeout(timer);
  }
}

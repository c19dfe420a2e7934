// The SDK's connection settings: which target and credentials each form of the options gives.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Steward, StewardOptions } from "@steward/client";

function opened(target: string, options: StewardOptions = {}): [string, boolean] {
  const steward = new Steward(target, options);
  steward.close();
  return [steward.target, steward.tls];
}

describe("Steward target and TLS settings", () => {
  it("picks plaintext or TLS from the target and options", () => {
    const pem = Buffer.from("PEM");
    assert.throws(() => new Steward("127.0.0.1"), Error);
    assert.deepEqual(opened("127.0.0.1:50051"), ["127.0.0.1:50051", false]);
    assert.deepEqual(opened("http://127.0.0.1:50051"), ["127.0.0.1:50051", false]);
    assert.deepEqual(opened("https://127.0.0.1:50051"), ["127.0.0.1:50051", true]);
    assert.deepEqual(opened("https://[::1]:50051/"), ["[::1]:50051", true]);
    assert.deepEqual(opened("https://steward.example.com"), ["steward.example.com:443", true]);
    assert.deepEqual(opened("127.0.0.1:50051", { tls: true }), ["127.0.0.1:50051", true]);
    assert.deepEqual(opened("127.0.0.1:50051", { rootCerts: pem }), ["127.0.0.1:50051", true]);
    for (const [target, options] of [
      ["http://127.0.0.1:50051", { tls: true }],
      ["http://127.0.0.1:50051", { rootCerts: pem }],
      ["https://127.0.0.1:50051", { tls: false }],
      ["127.0.0.1:50051", { tls: false, rootCerts: pem }],
      ["https://127.0.0.1:50051/steward", {}],
    ] as const) {
      const what = `${target} ${JSON.stringify(options)}`;
      assert.throws(() => new Steward(target, options), Error, what);
    }
  });
});

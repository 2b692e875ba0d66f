// Runs against a real longline stack that tests/e2e/test_node_client.py starts
// (Redis, a control plane with tokens, a worker) and names in LONGLINE_TARGET; the client
// token is in LONGLINE_TOKEN.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { EventType, LonglineClient, LonglineError, RunStatus } from "../src/index";

const target = process.env.LONGLINE_TARGET;
if (!target) throw new Error("LONGLINE_TARGET is not set: run me through make test");
const client = new LonglineClient(target, { token: process.env.LONGLINE_TOKEN });
after(() => client.close());

test("a call without a token is refused with the server's reason", async () => {
  const anonymous = new LonglineClient(target);
  try {
    await assert.rejects(anonymous.getRun("any"), (error: unknown) => {
      assert.ok(error instanceof LonglineError);
      assert.equal(error.code, "UNAUTHENTICATED");
      assert.equal(error.reason, "TOKEN_MISSING");
      return true;
    });
  } finally {
    anonymous.close();
  }
});

test("a stream cut after a few events resumes and sees every event exactly once", async () => {
  const { run, created } = await client.start("chatty", { chunks: 40, delay: 0.01 });
  assert.equal(created, true);
  const seen: string[] = [];
  const cut = new AbortController();
  for await (const event of client.events(run.runId, { signal: cut.signal })) {
    seen.push(event.eventId);
    if (seen.length === 5) cut.abort(); // drop the stream mid-run
  }
  assert.equal(seen.length, 5);
  let last = EventType.UNSPECIFIED;
  for await (const event of client.events(run.runId, { after: seen[seen.length - 1] })) {
    seen.push(event.eventId);
    last = event.type;
  }
  assert.equal(last, EventType.RUN_SUCCEEDED);
  const replay: string[] = [];
  for await (const event of client.events(run.runId)) replay.push(event.eventId);
  assert.deepEqual(seen, replay);
  assert.equal(new Set(seen).size, seen.length);
  assert.deepEqual(await client.result(run.runId), { chunks: 40 });
});

test("errors carry the server's reason", async () => {
  await assert.rejects(client.getRun("no-such-run"), (error: unknown) => {
    assert.ok(error instanceof LonglineError);
    assert.equal(error.code, "NOT_FOUND");
    assert.equal(error.reason, "RUN_NOT_FOUND");
    return true;
  });
  await assert.rejects(client.start("no_such_workflow", {}), (error: unknown) => {
    assert.ok(error instanceof LonglineError);
    assert.equal(error.reason, "WORKFLOW_NOT_FOUND");
    return true;
  });
});

test("idempotency, cancel and the workflow list", async () => {
  const key = `node-${Date.now()}`;
  const first = await client.start("slow", { steps: 100000, delay: 0.01 }, { idempotencyKey: key });
  const again = await client.start("slow", { steps: 1 }, { idempotencyKey: key });
  assert.equal(again.created, false);
  assert.equal(again.run.runId, first.run.runId);
  const cancelled = await client.cancel(first.run.runId, "from node");
  assert.equal(cancelled.status, RunStatus.CANCELLED);
  await assert.rejects(client.result(first.run.runId), /CANCELLED/);
  const names = (await client.listWorkflows()).map((w) => w.name);
  assert.ok(names.includes("chatty") && names.includes("slow"));
});

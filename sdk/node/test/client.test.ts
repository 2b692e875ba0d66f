// Runs against a real longline stack that tests/e2e/test_node_client.py starts
// (Redis, a control plane with tokens, a worker) and names in LONGLINE_TARGET; the client
// token is in LONGLINE_TOKEN.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { EventType, LonglineClient, LonglineError, RunStatus, WaitKind } from "../src/index";

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

/** INPUT_REQUESTED's data: what a UI needs to draw a form. */
interface InputRequest {
  name: string;
  prompt: string;
  schema: { required: string[]; properties: Record<string, { type: string }> };
  timeout_seconds: number | null;
}

test("a waiting run is answered from its INPUT_REQUESTED event", async () => {
  const { run } = await client.start("approval", {});
  // Follow the stream to the request, then to the run parking (both written at once).
  let request: InputRequest | undefined;
  const parked = new AbortController();
  for await (const event of client.events(run.runId, { signal: parked.signal })) {
    assert.notEqual(event.type, EventType.RUN_FAILED, event.message);
    if (event.type === EventType.INPUT_REQUESTED) request = JSON.parse(event.dataJson);
    if (event.type === EventType.RUN_WAITING && request) parked.abort();
  }
  assert.ok(request, "the stream ended without INPUT_REQUESTED");
  assert.equal(request.name, "approval");
  assert.equal(request.prompt, "Approve the plan?");
  assert.deepEqual(request.schema.required, ["approved"]);
  assert.equal(request.schema.properties.approved.type, "boolean");
  assert.equal(request.timeout_seconds, null);

  const waiting = await client.getRun(run.runId);
  assert.equal(waiting.status, RunStatus.WAITING);
  assert.equal(waiting.wait?.kind, WaitKind.INPUT);
  assert.equal(waiting.wait?.inputName, request.name);

  // A payload the schema refuses: the reason, and the field it names; the run still waits.
  const wrong = { approved: "yes" };
  await assert.rejects(client.sendInput(run.runId, request.name, wrong), (error: unknown) => {
    assert.ok(error instanceof LonglineError);
    assert.equal(error.code, "INVALID_ARGUMENT");
    assert.equal(error.reason, "INPUT_DOES_NOT_MATCH_SCHEMA");
    assert.match(error.message, /\$\.approved/);
    return true;
  });
  assert.equal((await client.getRun(run.runId)).status, RunStatus.WAITING);

  const answer = { approved: true, note: "from node" };
  const sent = await client.sendInput(run.runId, request.name, answer);
  assert.equal(sent.duplicate, false);
  assert.equal(sent.run.runId, run.runId);
  assert.deepEqual(await client.result(run.runId), { answer });
  assert.equal((await client.getRun(run.runId)).status, RunStatus.SUCCEEDED);

  // A retried call is a duplicate; another payload is refused with its reason.
  assert.equal((await client.sendInput(run.runId, request.name, answer)).duplicate, true);
  await assert.rejects(
    client.sendInput(run.runId, request.name, { approved: false }),
    (error: unknown) => {
      assert.ok(error instanceof LonglineError);
      assert.equal(error.code, "FAILED_PRECONDITION");
      assert.equal(error.reason, "INPUT_ALREADY_RECEIVED");
      return true;
    },
  );
  let received: unknown = null;
  for await (const event of client.events(run.runId)) {
    if (event.type === EventType.INPUT_RECEIVED) received = JSON.parse(event.dataJson);
  }
  assert.deepEqual(received, { name: "approval", payload: answer, sender: "alice" });
});

// A small Node.js client for longline over the generated RunService stubs (src/gen, made by
// `make protos` with protobuf-ts). What it adds to them: an event stream that resumes by
// itself from the last event id, and the server's machine-readable error reasons.
import { ChannelCredentials } from "@grpc/grpc-js";
import { GrpcTransport } from "@protobuf-ts/grpc-transport";
import { RpcError } from "@protobuf-ts/runtime-rpc";
import { ErrorInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";
import { RunServiceClient } from "./gen/longline/v1/runs.client";
import {
  EventType,
  Run,
  RunEvent,
  RunStatus,
  RunWait,
  WaitKind,
  Workflow,
} from "./gen/longline/v1/runs";

export { EventType, Run, RunEvent, RunStatus, RunWait, WaitKind, Workflow };

const TERMINAL = new Set([EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_CANCELLED]);
// Codes after which a stream is resumed from its cursor rather than failed.
const RESUMABLE = new Set(["UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED", "DEADLINE_EXCEEDED"]);

/** A failed call: the gRPC code, the message, and longline's stable reason (ErrorInfo). */
export class LonglineError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly reason: string,
  ) {
    super(`${code}: ${message}`);
  }
}

/** The google.rpc.ErrorInfo reason in an error's status details ("" if none). */
export function errorReason(error: RpcError): string {
  const raw = error.meta["grpc-status-details-bin"];
  if (typeof raw !== "string") return "";
  const status = Status.fromBinary(Buffer.from(raw, "base64"));
  for (const detail of status.details) {
    if (detail.typeUrl.endsWith("/google.rpc.ErrorInfo")) {
      return ErrorInfo.fromBinary(detail.value).reason;
    }
  }
  return "";
}

function mapped(error: unknown): unknown {
  return error instanceof RpcError
    ? new LonglineError(error.code, error.message, errorReason(error))
    : error;
}

async function call<T>(promise: PromiseLike<{ response: T }>): Promise<T> {
  try {
    return (await promise).response;
  } catch (error) {
    throw mapped(error);
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export interface StreamOptions {
  /** Resume after this event id ("" or absent: from the first event). */
  after?: string;
  /** Give up after this long without a working stream (ms). */
  resumeFor?: number;
  /** Stops the iterator (the stream is cancelled). */
  signal?: AbortSignal;
}

export interface ClientOptions {
  /** A client token, sent as `authorization: Bearer <token>` with every call. */
  token?: string;
  /** Connect over TLS, verifying the server with these PEM CA certificates (or, with
   *  `tls: true` and no `rootCerts`, the system's roots). */
  tls?: boolean;
  rootCerts?: Buffer;
}

export class LonglineClient {
  readonly runs: RunServiceClient;
  private readonly transport: GrpcTransport;

  constructor(target: string, options: ClientOptions = {}) {
    const secure = options.tls || options.rootCerts !== undefined;
    this.transport = new GrpcTransport({
      host: target,
      channelCredentials: secure
        ? ChannelCredentials.createSsl(options.rootCerts ?? null)
        : ChannelCredentials.createInsecure(),
      meta: options.token ? { authorization: `Bearer ${options.token}` } : {},
    });
    this.runs = new RunServiceClient(this.transport);
  }

  /** Queue a run; a repeated idempotency key returns the first run. */
  async start(
    workflow: string,
    input: unknown,
    options: { idempotencyKey?: string; labels?: Record<string, string> } = {},
  ): Promise<{ run: Run; created: boolean }> {
    const response = await call(
      this.runs.startRun({
        workflow,
        inputJson: JSON.stringify(input ?? null),
        idempotencyKey: options.idempotencyKey ?? "",
        labels: options.labels ?? {},
      }),
    );
    return { run: response.run!, created: response.created };
  }

  async getRun(runId: string): Promise<Run> {
    return (await call(this.runs.getRun({ runId }))).run!;
  }

  async cancel(runId: string, reason = ""): Promise<Run> {
    return (await call(this.runs.cancelRun({ runId, reason }))).run!;
  }

  /**
   * Answer the run's request for input `name` (its INPUT_REQUESTED event carries the name,
   * prompt and JSON Schema). `duplicate` when this very payload had been received already
   * (a retried call). A payload the schema refuses is INVALID_ARGUMENT with the reason
   * INPUT_DOES_NOT_MATCH_SCHEMA; another payload sent before, a request that timed out or a
   * run that ended are FAILED_PRECONDITION (INPUT_ALREADY_RECEIVED, INPUT_TIMED_OUT,
   * RUN_ALREADY_ENDED).
   */
  async sendInput(
    runId: string,
    name: string,
    payload: unknown,
  ): Promise<{ run: Run; duplicate: boolean }> {
    const response = await call(
      this.runs.sendInput({ runId, name, payloadJson: JSON.stringify(payload ?? null) }),
    );
    return { run: response.run!, duplicate: response.duplicate };
  }

  async listWorkflows(): Promise<Workflow[]> {
    const out: Workflow[] = [];
    let pageToken = "";
    do {
      const page = await call(this.runs.listWorkflows({ pageSize: 1000, pageToken }));
      out.push(...page.workflows);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return out;
  }

  /**
   * The run's events from a cursor, live, through its terminal event. A dropped stream is
   * reopened after the last event seen, with backoff: every event arrives exactly once.
   */
  async *events(runId: string, options: StreamOptions = {}): AsyncGenerator<RunEvent> {
    let cursor = options.after ?? "";
    let delay = 50;
    let failingSince = 0;
    while (!options.signal?.aborted) {
      const stream = this.runs.streamRun({ runId, afterEventId: cursor }, { abort: options.signal });
      try {
        for await (const message of stream.responses) {
          const event = message.event!;
          cursor = event.eventId;
          delay = 50;
          failingSince = 0;
          yield event;
          if (TERMINAL.has(event.type)) return;
        }
        return; // the server ended the stream: the run had ended
      } catch (error) {
        if (options.signal?.aborted) return;
        if (!(error instanceof RpcError) || !RESUMABLE.has(error.code)) throw mapped(error);
        failingSince ||= Date.now();
        if (Date.now() - failingSince > (options.resumeFor ?? 60_000)) throw mapped(error);
        await sleep(delay * (0.5 + Math.random()));
        delay = Math.min(delay * 2, 2000);
      }
    }
  }

  /** Wait for the run to end; its decoded result, or a LonglineError saying why it did not. */
  async result(runId: string): Promise<unknown> {
    let run = await this.getRun(runId);
    if (![RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED].includes(run.status)) {
      for await (const _ of this.events(runId, { after: run.lastEventId })) {
        // drain to the terminal event
      }
      run = await this.getRun(runId);
    }
    if (run.status === RunStatus.SUCCEEDED) return JSON.parse(run.resultJson || "null");
    const what = run.status === RunStatus.CANCELLED ? "CANCELLED" : "FAILED";
    const error = run.error ? `${run.error.type}: ${run.error.message}` : "";
    throw new LonglineError(what, `run ${runId} ended ${what} ${error}`.trim(), `RUN_${what}`);
  }

  close(): void {
    this.transport.close();
  }
}

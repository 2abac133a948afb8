/**
 * The agent wire protocol, defined once. Both ends import these schemas: the control plane
 * validates every frame an agent sends, the agent validates every frame the control plane sends.
 * One JSON object per WebSocket text frame; binary frames are used only on VNC stream sockets.
 */
import { Static, TSchema, Type } from '@sinclair/typebox';
import Ajv, { ValidateFunction } from 'ajv';

export const PROTOCOL_VERSION = 1;

/** Largest control frame either side accepts; a command or report never comes near it. */
export const MAX_CONTROL_FRAME_BYTES = 1024 * 1024;

export const Platform = Type.Union([Type.Literal('docker'), Type.Literal('kubernetes')]);
export type Platform = Static<typeof Platform>;

export const CommandType = Type.Union([
  Type.Literal('start_session'),
  Type.Literal('stop_session'),
  Type.Literal('hibernate_session'),
  Type.Literal('wake_session'),
]);
export type CommandType = Static<typeof CommandType>;

/** What an agent observes of one session on its platform. */
export const ObservedState = Type.Union([Type.Literal('starting'), Type.Literal('running'), Type.Literal('hibernated'), Type.Literal('failed')]);
export type ObservedState = Static<typeof ObservedState>;

export const ReportedSession = Type.Object(
  {
    session_id: Type.String({ minLength: 1, maxLength: 255 }),
    state: ObservedState,
    metadata: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  },
  { additionalProperties: false },
);
export type ReportedSession = Static<typeof ReportedSession>;

export const Capacity = Type.Object(
  {
    max_sessions: Type.Integer({ minimum: 0 }),
    max_cpu: Type.Optional(Type.Number({ minimum: 0 })),
    max_memory: Type.Optional(Type.Number({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type Capacity = Static<typeof Capacity>;

/** Where the agent reaches a session's VNC server (never handed to a browser). */
export const VncEndpoint = Type.Object(
  { host: Type.String({ minLength: 1 }), port: Type.Integer({ minimum: 1, maximum: 65535 }) },
  { additionalProperties: false },
);
export type VncEndpoint = Static<typeof VncEndpoint>;

/** The session template as the agent needs it to create the session. */
export const TemplateSpec = Type.Object(
  {
    name: Type.String({ minLength: 1 }),
    image: Type.String({ minLength: 1 }),
    vnc_port: Type.Integer({ minimum: 1, maximum: 65535 }),
    env: Type.Record(Type.String(), Type.String()),
    resources: Type.Object({ cpu: Type.Optional(Type.String()), memory: Type.Optional(Type.String()) }, { additionalProperties: false }),
    home_mount: Type.String({ minLength: 1 }),
  },
  { additionalProperties: false },
);
export type TemplateSpec = Static<typeof TemplateSpec>;

export const StartSessionData = Type.Object(
  {
    user: Type.String({ minLength: 1 }),
    template: TemplateSpec,
    persistent_home: Type.Boolean(),
    /** The home volume (Docker) or PVC (Kubernetes) to mount; absent: the driver's own per-user name. */
    home_volume: Type.Optional(Type.String({ pattern: '^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$' })),
  },
  { additionalProperties: false },
);
export type StartSessionData = Static<typeof StartSessionData>;

/** What a completed command reports back. */
export const CommandResult = Type.Object(
  {
    state: Type.Union([Type.Literal('running'), Type.Literal('hibernated'), Type.Literal('terminated')]),
    vnc: Type.Optional(VncEndpoint),
    platform_metadata: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  },
  { additionalProperties: false },
);
export type CommandResult = Static<typeof CommandResult>;

// ---------------------------------------------------------------- agent → control plane

export const RegisterMessage = Type.Object(
  {
    type: Type.Literal('register'),
    protocol_version: Type.Integer({ minimum: 1 }),
    agent_id: Type.String({ minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' }),
    platform: Platform,
    region: Type.Optional(Type.Union([Type.String({ maxLength: 100 }), Type.Null()])),
    cluster_id: Type.Optional(Type.Union([Type.String({ maxLength: 255 }), Type.Null()])),
    capacity: Capacity,
    sessions: Type.Array(ReportedSession, { maxItems: 10000 }),
    metadata: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  },
  { additionalProperties: false },
);

export const HeartbeatMessage = Type.Object(
  { type: Type.Literal('heartbeat'), active_sessions: Type.Integer({ minimum: 0 }) },
  { additionalProperties: false },
);

export const AckMessage = Type.Object({ type: Type.Literal('ack'), command_id: Type.String({ format: 'uuid' }) }, { additionalProperties: false });

export const CompletedMessage = Type.Object(
  { type: Type.Literal('completed'), command_id: Type.String({ format: 'uuid' }), result: CommandResult },
  { additionalProperties: false },
);

export const FailedMessage = Type.Object(
  {
    type: Type.Literal('failed'),
    command_id: Type.String({ format: 'uuid' }),
    error: Type.String({ minLength: 1, maxLength: 4000 }),
    /** false when retrying cannot help (bad image, over capacity, invalid template). */
    retryable: Type.Boolean(),
  },
  { additionalProperties: false },
);

/** Progress while a command runs ("creating container", "waiting for VNC"). */
export const ProgressMessage = Type.Object(
  {
    type: Type.Literal('progress'),
    command_id: Type.String({ format: 'uuid' }),
    message: Type.String({ maxLength: 500 }),
  },
  { additionalProperties: false },
);

/** The agent's answer to open_stream when it could not reach the session's VNC server. */
export const StreamErrorMessage = Type.Object(
  { type: Type.Literal('stream_error'), stream_id: Type.String({ minLength: 1 }), error: Type.String() },
  { additionalProperties: false },
);

export const AgentMessage = Type.Union([RegisterMessage, HeartbeatMessage, AckMessage, CompletedMessage, FailedMessage, ProgressMessage, StreamErrorMessage]);
export type RegisterMessage = Static<typeof RegisterMessage>;
export type HeartbeatMessage = Static<typeof HeartbeatMessage>;
export type AckMessage = Static<typeof AckMessage>;
export type CompletedMessage = Static<typeof CompletedMessage>;
export type FailedMessage = Static<typeof FailedMessage>;
export type ProgressMessage = Static<typeof ProgressMessage>;
export type StreamErrorMessage = Static<typeof StreamErrorMessage>;
export type AgentMessage = Static<typeof AgentMessage>;

// ---------------------------------------------------------------- control plane → agent

export const RegisteredMessage = Type.Object(
  {
    type: Type.Literal('registered'),
    conn_id: Type.String(),
    heartbeat_interval_ms: Type.Integer({ minimum: 100 }),
    /** The control plane's clock (epoch ms) when it sent this: the agent keeps the offset to read `expires_at_ms`. */
    server_time_ms: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

/**
 * A command has an owner (the session's workflow), a generation and a deadline. The generation
 * is the session's command sequence number: it only grows, so an agent that has already acted on
 * generation n refuses anything older (a stale re-delivery). `expires_in_ms` is the time left when
 * the frame was sent; `expires_at_ms` the deadline on the control plane's clock, which the agent
 * reads through the offset it measured at registration (so an agent frozen with the frame in its
 * socket buffer still sees it expired, and no clock agreement is needed). An agent never starts a
 * command after it expired, also when it was queued behind another one.
 */
export const CommandMessage = Type.Object(
  {
    type: Type.Literal('command'),
    command_id: Type.String({ format: 'uuid' }),
    command_type: CommandType,
    session_id: Type.String({ minLength: 1 }),
    generation: Type.Integer({ minimum: 0 }),
    expires_in_ms: Type.Integer({ minimum: 0 }),
    expires_at_ms: Type.Optional(Type.Integer({ minimum: 0 })),
    data: Type.Record(Type.String(), Type.Unknown()),
  },
  { additionalProperties: false },
);

/**
 * The workflow gave up on a command (timed out, cancelled, superseded): the agent must not start
 * it, and if it already ran (or is running) it undoes what it did: a start is stopped, a wake
 * hibernated again, a hibernate woken again. Also sent in answer to a late result.
 */
export const CancelCommandMessage = Type.Object(
  {
    type: Type.Literal('cancel_command'),
    command_id: Type.String({ format: 'uuid' }),
    session_id: Type.String({ minLength: 1 }),
    reason: Type.String({ maxLength: 500 }),
  },
  { additionalProperties: false },
);

/** The control plane wrote the command's result durably: the agent stops re-sending it. */
export const ResultAckMessage = Type.Object({ type: Type.Literal('result_ack'), command_id: Type.String({ format: 'uuid' }) }, { additionalProperties: false });

/**
 * Asks the agent to dial a dedicated stream socket back to `url` and relay it to the session's
 * VNC server, so VNC bytes never share the control socket (no head-of-line blocking).
 */
export const OpenStreamMessage = Type.Object(
  {
    type: Type.Literal('open_stream'),
    stream_id: Type.String({ minLength: 1 }),
    session_id: Type.String({ minLength: 1 }),
    url: Type.String({ minLength: 1 }),
  },
  { additionalProperties: false },
);

/** A reason for refusing a frame; the socket stays open unless the error is fatal. */
export const ErrorMessage = Type.Object({ type: Type.Literal('error'), reason: Type.String(), fatal: Type.Boolean() }, { additionalProperties: false });

export const ControlPlaneMessage = Type.Union([RegisteredMessage, CommandMessage, CancelCommandMessage, ResultAckMessage, OpenStreamMessage, ErrorMessage]);
export type RegisteredMessage = Static<typeof RegisteredMessage>;
export type CommandMessage = Static<typeof CommandMessage>;
export type CancelCommandMessage = Static<typeof CancelCommandMessage>;
export type ResultAckMessage = Static<typeof ResultAckMessage>;
export type OpenStreamMessage = Static<typeof OpenStreamMessage>;
export type ErrorMessage = Static<typeof ErrorMessage>;
export type ControlPlaneMessage = Static<typeof ControlPlaneMessage>;

// ---------------------------------------------------------------- validation

const ajv = new Ajv({ allErrors: false, strict: false });
ajv.addFormat('uuid', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);

export type Parsed<T> = { ok: true; value: T } | { ok: false; reason: string };

function compileByType(members: TSchema[]): Map<string, ValidateFunction> {
  const byType = new Map<string, ValidateFunction>();
  for (const schema of members) {
    const literal = (schema as unknown as { properties: { type: { const: string } } }).properties.type.const;
    byType.set(literal, ajv.compile(schema));
  }
  return byType;
}

const agentValidators = compileByType(AgentMessage.anyOf);
const controlPlaneValidators = compileByType(ControlPlaneMessage.anyOf);
const validateStartData = ajv.compile(StartSessionData);

function parseFrame<T>(raw: unknown, validators: Map<string, ValidateFunction>): Parsed<T> {
  let text: string;
  if (typeof raw === 'string') text = raw;
  else if (Buffer.isBuffer(raw)) text = raw.toString('utf8');
  else return { ok: false, reason: 'frame must be a JSON text frame' };
  if (Buffer.byteLength(text) > MAX_CONTROL_FRAME_BYTES) return { ok: false, reason: 'frame too large' };
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'frame is not valid JSON (one JSON object per frame)' };
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    return { ok: false, reason: 'frame must be one JSON object' };
  }
  const type = (obj as { type?: unknown }).type;
  const validate = typeof type === 'string' ? validators.get(type) : undefined;
  if (!validate) return { ok: false, reason: `unknown message type ${JSON.stringify(type ?? null)}` };
  if (!validate(obj)) {
    const e = validate.errors?.[0];
    return { ok: false, reason: `invalid ${type} message: ${e?.instancePath || '/'} ${e?.message ?? 'is invalid'}` };
  }
  return { ok: true, value: obj as T };
}

export const parseAgentMessage = (raw: unknown): Parsed<AgentMessage> => parseFrame(raw, agentValidators);
export const parseControlPlaneMessage = (raw: unknown): Parsed<ControlPlaneMessage> => parseFrame(raw, controlPlaneValidators);

export function parseStartSessionData(data: unknown): Parsed<StartSessionData> {
  if (validateStartData(data)) return { ok: true, value: data as StartSessionData };
  const e = validateStartData.errors?.[0];
  return { ok: false, reason: `invalid start_session data: ${e?.instancePath || '/'} ${e?.message}` };
}

export const encode = (msg: AgentMessage | ControlPlaneMessage): string => JSON.stringify(msg);

/** WebSocket close codes used on agent sockets (4000-4999 is the application range). */
export const CloseCode = {
  Unauthorized: 4401,
  ProtocolError: 4400,
  Replaced: 4409,
  HeartbeatTimeout: 4408,
  ShuttingDown: 1001,
} as const;

/** Header an agent presents its credential in, on the upgrade request. */
export const AGENT_AUTH_HEADER = 'authorization';
/** Path of the agent control socket and of the per-stream VNC sockets on the gateway. */
export const AGENT_CONNECT_PATH = '/api/v1/agents/connect';
export const AGENT_STREAM_PATH = '/api/v1/agents/stream';

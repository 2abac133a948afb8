/**
 * Response shapes of the routes the console uses. They are the OpenAPI document's (so the
 * console's typed client is generated from them) and Fastify's serializers: a field a route
 * returns but does not declare here is not sent.
 */
import { Type, TSchema } from '@sinclair/typebox';

/** A nullable scalar (OpenAPI 3.0 `nullable`, understood by the serializer and openapi-typescript). */
const N = <T extends TSchema>(t: T) => ({ ...t, nullable: true }) as unknown as ReturnType<typeof Type.Union<[T, ReturnType<typeof Type.Null>]>>;
const When = Type.String({ format: 'date-time' });
const Free = Type.Object({}, { additionalProperties: true });

export const ErrorSchema = Type.Object(
  {
    statusCode: Type.Integer(),
    error: Type.String(),
    message: Type.String(),
    errors: Type.Optional(Type.Array(Type.Object({ path: Type.String(), line: N(Type.Integer()), message: Type.String() }))),
  },
  { $id: 'Error' },
);

export const Transition = N(Type.String({ description: 'starting | hibernating | waking | stopping' }));

export const SessionSchema = Type.Object({
  id: Type.String(),
  user: Type.String(),
  template: Type.String(),
  state: Type.String({ description: 'pending | running | hibernated | terminating | terminated | failed' }),
  platform: N(Type.String()),
  agent_id: N(Type.String()),
  cluster_id: N(Type.String()),
  tags: Type.Array(Type.String()),
  error: N(Type.String()),
  url: Type.String(),
  created_at: N(When),
  updated_at: N(When),
  last_activity: N(When),
  lifetime: Type.Object(
    {
      idle_timeout: Type.String({ description: "no keyboard/mouse input this long → hibernated ('0': never)" }),
      max_session_duration: Type.String({ description: "running this long (since its last start or wake) → stopped ('0': never)" }),
      running_since: N(When),
      last_input_at: N(When),
      hibernates_at: N({ ...When, description: 'when it hibernates if nobody types or moves the mouse' }),
      stops_at: N(When),
      alive_because: Type.String({ description: 'not_running | idle_disabled | recent_input | started_recently' }),
    },
    { description: 'why the session is still alive, and until when' },
  ),
  transition: Transition,
  progress: N(Type.String()),
  platform_metadata: Type.Optional(Free),
});

export const AgentSchema = Type.Object({
  agent_id: Type.String(),
  status: Type.String(),
  health: Type.Union([Type.Literal('online'), Type.Literal('warning'), Type.Literal('offline')]),
  heartbeat_age_s: N(Type.Number()),
  platform: Type.String(),
  region: N(Type.String()),
  cluster_id: N(Type.String()),
  capacity: Type.Object({ max_sessions: Type.Integer(), current_sessions: Type.Integer() }, { additionalProperties: true }),
  last_heartbeat: N(When),
  metadata: Free,
  ha: N(Type.Object({ identity: Type.String(), leader: Type.Boolean() })),
});

export const TemplateSchema = Type.Object({
  name: Type.String(),
  display_name: Type.String(),
  description: N(Type.String()),
  category: N(Type.String()),
  icon: N(Type.String()),
  image: N(Type.String()),
  tags: Type.Array(Type.String()),
  source: Type.String(),
  resources: N(Type.Object({ cpu: N(Type.String()), memory: N(Type.String()) })),
});

/** A new user's name (POST /users) and the list filter ?user= (v1's existing names may not follow it). */
export const USERNAME_PATTERN = '^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$';

export const QuotaSchema = Type.Object({ max_sessions: Type.Integer(), max_cpu: Type.String(), max_memory: Type.String() });

export const UserSchema = Type.Object({
  id: Type.String(),
  username: Type.String(),
  email: N(Type.String()),
  role: Type.String(),
  active: Type.Boolean(),
  created_at: N(When),
  quota: N(QuotaSchema),
});

export const MigrationRunSchema = Type.Object({
  run_id: Type.String(),
  workflow_id: Type.String(),
  status: Type.String(),
  phase: N(Type.String()),
  started_at: N(When),
  closed_at: N(When),
  temporal_url: N(Type.String()),
});

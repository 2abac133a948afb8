/** Response shapes of GET /api/v1/audit and GET /api/v1/license (in the OpenAPI document, so the console's typed client has them). */
import { Type, TSchema } from '@sinclair/typebox';

const N = <T extends TSchema>(t: T) => ({ ...t, nullable: true }) as unknown as ReturnType<typeof Type.Union<[T, ReturnType<typeof Type.Null>]>>;

export const AuditEntrySchema = Type.Object({
  id: Type.Integer(),
  user_id: N(Type.String({ description: "users.id of the caller; '' unauthenticated; 'system' for automatic actions" })),
  username: N(Type.String({ description: 'the username of user_id, when it is a user' })),
  action: N(Type.String({ description: 'HTTP method, or a dotted name for automatic actions (session.idle_hibernate, …)' })),
  resource_type: N(Type.String({ description: 'URL path, or the resource kind for automatic actions' })),
  resource_id: N(Type.String()),
  changes: N(
    Type.Object(
      {},
      { additionalProperties: true, description: 'v1 shape: {method, path, status_code, duration_ms, request_body, response_body, error, metadata}' },
    ),
  ),
  timestamp: N(Type.String({ format: 'date-time' })),
  ip_address: N(Type.String()),
});

const Limit = N(Type.Integer({ description: 'null: unlimited' }));
export const LicenseSchema = Type.Object({
  licensed: Type.Boolean({ description: 'false: no licenses table or no active row — nothing is limited' }),
  tier: N(Type.String()),
  license_key: N(Type.String({ description: 'the key, all but its last 4 characters masked' })),
  status: N(Type.String()),
  issued_at: N(Type.String({ format: 'date-time' })),
  activated_at: N(Type.String({ format: 'date-time' })),
  expires_at: N(Type.String({ format: 'date-time' })),
  expired: Type.Boolean({ description: 'an expired active licence refuses new users and sessions (as v1)' }),
  days_until_expiry: N(Type.Integer()),
  limits: Type.Object({ max_users: Limit, max_sessions: Limit, max_nodes: Limit }),
  usage: Type.Object({
    users: Type.Integer({ description: 'active users' }),
    sessions: Type.Integer({ description: 'pending, running and hibernated sessions' }),
    nodes: Type.Integer({ description: 'online agents' }),
  }),
  warnings: Type.Array(Type.String(), { description: "at 80% or more of a limit (v1's limit warnings)" }),
});

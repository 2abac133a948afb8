/** Search attributes that make sessions findable in the Temporal UI (registered by the worker). */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const SA = {
  sessionId: defineSearchAttributeKey('StreamSpaceSessionId', SearchAttributeType.KEYWORD),
  user: defineSearchAttributeKey('StreamSpaceUser', SearchAttributeType.KEYWORD),
  platform: defineSearchAttributeKey('StreamSpacePlatform', SearchAttributeType.KEYWORD),
  agent: defineSearchAttributeKey('StreamSpaceAgent', SearchAttributeType.KEYWORD),
  state: defineSearchAttributeKey('StreamSpaceState', SearchAttributeType.KEYWORD),
  migrationPhase: defineSearchAttributeKey('StreamSpaceMigrationPhase', SearchAttributeType.KEYWORD),
};

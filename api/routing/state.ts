/** The routing state lives below api/ (the migration's activities write it); re-exported for the gateway. */
export { ROUTING_KEY, routeFor, userBucket } from '../../activities/migration/routing-state';
export type { RouteSet, RoutingState } from '../../activities/migration/routing-state';

export { sessionWorkflow } from './session';
export { migrationWorkflow } from './migration';

export { sessionWorkflow } from './session';
export { migrationWorkflow } from './migration';
export { migrationImportWorkflow } from './migration/import';
export { sessionCleanupWorkflow } from './session-cleanup';

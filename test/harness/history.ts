/**
 * What a session workflow's history says about its agent commands. A command runs either on the
 * fast path (the quickCommand local activity: a marker whose result says done) or as a
 * dispatchCommand activity (after quickCommand found no outcome yet, or on histories from before).
 */
import type { temporal } from '@temporalio/proto';

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

export interface HistoryCommand {
  type: string;
  /** Workflow time of the event (ms): when the activity was scheduled, or the marker recorded. */
  at: number;
  via: 'activity' | 'local';
}

const json = (p: { data?: Uint8Array | null } | undefined | null): any => (p?.data ? JSON.parse(Buffer.from(p.data).toString()) : undefined);
const timeOf = (e: HistoryEvent) => Number(e.eventTime!.seconds) * 1000 + Math.floor((e.eventTime!.nanos ?? 0) / 1e6);

export function commandsInHistory(events: HistoryEvent[] | null | undefined): HistoryCommand[] {
  const out: HistoryCommand[] = [];
  for (const e of events ?? []) {
    const a = e.activityTaskScheduledEventAttributes;
    if (a?.activityType?.name === 'dispatchCommand') {
      out.push({ type: json(a.input?.payloads?.[0]).commandType, at: timeOf(e), via: 'activity' });
      continue;
    }
    const m = e.markerRecordedEventAttributes;
    if (m?.markerName !== 'core_local_activity') continue;
    const data = json(m.details?.data?.payloads?.[0]);
    if (data?.activity_type !== 'quickCommand') continue;
    const result = json(m.details?.result?.payloads?.[0]);
    if (result?.done) out.push({ type: result.command, at: timeOf(e), via: 'local' });
  }
  return out;
}

/** The patch ids a history's patch markers name (workflow code's patched(id)), in order. */
export function patchesInHistory(events: HistoryEvent[] | null | undefined): string[] {
  return (events ?? [])
    .filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_patch')
    .map((e) => json(e.markerRecordedEventAttributes!.details!['patch-data'].payloads![0]).id);
}

/** Local-activity markers recorded while each Update ran (between its acceptance and its completion), by Update name. */
export function localActivitiesPerUpdate(events: HistoryEvent[] | null | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  let running: string | null = null;
  for (const e of events ?? []) {
    const accepted = e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name;
    if (accepted) out[(running = accepted)] = 0;
    else if (e.workflowExecutionUpdateCompletedEventAttributes) running = null;
    else if (running && e.markerRecordedEventAttributes?.markerName === 'core_local_activity') out[running]++;
  }
  return out;
}

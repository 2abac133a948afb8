/**
 * Sessions already running keep running across an upgrade: histories recorded by earlier code
 * (test/fixtures/histories: whole sessions, create → hibernate → wake → stop, one on a fake agent
 * that answers at once, one on the real Docker agent, by two generations of the code: patch by
 * patch, and with session-patches-2026-11) replay on this code without a determinism violation. The session-lifecycle test replays a history this code records.
 */
import { patchesInHistory } from './harness/history';
import { historyFixtures, replayOnBuiltCode } from './harness/replay';

jest.setTimeout(120_000);

describe('session histories recorded by earlier code replay on this code', () => {
  const fixtures = historyFixtures();

  test('the fixtures are there: recorded patch by patch (before session-patches-2026-11), and with session-patches-2026-11', () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(4);
    const generations = fixtures.map((f) => {
      const patches = patchesInHistory(f.history.events);
      // So their replay takes the path a session started by that code takes.
      if (f.name.startsWith('session-2d72707-')) {
        expect(patches).toEqual(expect.arrayContaining(['start-issues-command', 'command-records-state', 'quick-command', 'quota-on-wake']));
        expect(patches).not.toContain('session-patches-2026-11');
      } else expect(patches).toEqual(['session-patches-2026-11']);
      return patches.length === 1 ? patches[0] : 'patch by patch';
    });
    expect(new Set(generations)).toEqual(new Set(['patch by patch', 'session-patches-2026-11']));
  });

  test.each(fixtures.map((f) => [f.name, f.history] as const))('%s replays', async (name, history) => {
    const started = history.events![0].workflowExecutionStartedEventAttributes!;
    expect(started.workflowType!.name).toBe('sessionWorkflow');
    await replayOnBuiltCode(history, `fixture/${name}`);
  });
});

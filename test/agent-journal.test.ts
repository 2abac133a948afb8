/**
 * The agent's command journal (agents/common/journal.ts) when replicas of one agent share its file
 * (one host, the same AGENT_STATE_DIR or the default under the temp dir): each replica compacts the
 * file as it starts. Three processes doing that again and again, at once, must all live. With one
 * shared temporary name, a rename found the other's already moved and the replica died at start
 * (ENOENT: seen in CI, two Kubernetes agent replicas of monitoring.test).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './harness/stack';

jest.setTimeout(60_000);

const JOURNAL = path.join(ROOT, 'dist', 'agents', 'common', 'journal.js');

/** A process that opens the journal `times` times (each open compacts it); resolves to its exit code and stderr. */
function opener(file: string, times: number): Promise<{ code: number | null; stderr: string }> {
  const script = `const { CommandJournal } = require(${JSON.stringify(JOURNAL)}); for (let i = 0; i < ${times}; i++) new CommandJournal(${JSON.stringify(file)});`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stderr })));
}

test('two replicas opening one journal at once both live, and the journal keeps its entries', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'journal-'));
  try {
    const file = path.join(dir, 'commands.jsonl');
    const entry = { k: 'gen', s: 'session-1', g: 7, at: Date.now() };
    writeFileSync(file, JSON.stringify(entry) + '\n');
    const runs = await Promise.all([opener(file, 500), opener(file, 500), opener(file, 500)]);
    for (const r of runs) expect(r).toEqual({ code: 0, stderr: '' });
    // Every compaction wrote the same live entry; no temporary file is left behind.
    expect(readFileSync(file, 'utf8')).toBe(JSON.stringify(entry) + '\n');
    expect(readdirSync(dir)).toEqual(['commands.jsonl']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

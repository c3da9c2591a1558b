import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newReportId, ReportSchema } from '../src/index.js';

test('report ids are UUIDv7: valid report ids that sort in the order they were made', () => {
  const before = Date.now();
  const ids = Array.from({ length: 5000 }, () => newReportId());
  const after = Date.now();
  for (const id of ids) {
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  }
  // Many within one millisecond: still in order, and all different.
  assert.deepEqual([...ids].sort(), ids);
  assert.equal(new Set(ids).size, ids.length);
  // The leading 48 bits are the time they were made.
  const ms = (id: string) => parseInt(id.replaceAll('-', '').slice(0, 12), 16);
  assert.ok(ms(ids[0]!) >= before && ms(ids.at(-1)!) <= after);
  const report = {
    id: ids[0],
    action: 'ban',
    target: '192.0.2.1',
    host: 'web1',
    origin: 'fail2ban',
    time: new Date().toISOString(),
  };
  assert.ok(ReportSchema.safeParse(report).success);
});

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cursor } from '../src/cursor.js';
import { CursorFile, CursorFileError } from '../src/cursor-file.js';

describe('Cursor', () => {
  test('starts at the floor, then reads from watermark − overlap and skips the keys reported there', () => {
    const cursor = Cursor.start('db/eventlog', 'row-md5', 1000, 60);
    assert.equal(cursor.lowerBound(), 1000);
    cursor.advance([
      { key: 'a', epoch: 1010 },
      { key: 'b', epoch: 1100 },
      { key: 'c', epoch: 1100 },
    ]);
    assert.equal(cursor.watermark, 1100);
    assert.equal(cursor.lowerBound(), 1040);
    // 'a' fell out of the window (and its margin): rows that old are not read again anyway.
    assert.deepEqual(cursor.seenKeys().sort(), ['b', 'c']);
  });

  test('several events of one instant stay known until the window has passed them', () => {
    const cursor = Cursor.start('s', 'row-md5', null, 10);
    assert.equal(cursor.lowerBound(), null);
    cursor.advance([
      { key: 'x1', epoch: 50.000001 },
      { key: 'x2', epoch: 50.000001 },
    ]);
    cursor.advance([{ key: 'y', epoch: 60.5 }]);
    assert.deepEqual(cursor.seenKeys().sort(), ['x1', 'x2', 'y']);
    cursor.advance([{ key: 'z', epoch: 61.5 }]);
    assert.deepEqual(cursor.seenKeys().sort(), ['y', 'z']);
    assert.ok(cursor.lowerBound()! > 50.000001);
  });

  test('a late event older than the watermark keeps the watermark', () => {
    const cursor = Cursor.start('s', 'row-md5', null, 100);
    cursor.advance([{ key: 'new', epoch: 500 }]);
    cursor.advance([{ key: 'late', epoch: 450 }]);
    assert.equal(cursor.watermark, 500);
    assert.ok(cursor.has('late'));
  });

  test('rekeyed (THREECX_ID_COLUMN changed): goes on strictly after the watermark with no old keys', () => {
    const cursor = Cursor.start('s', 'row-md5', null, 60);
    cursor.advance([{ key: 'md5a', epoch: 100.5 }]);
    const rekeyed = Cursor.rekey(cursor.toJSON(), 'column:id', 60);
    assert.equal(rekeyed.keys, 'column:id');
    assert.deepEqual(rekeyed.seenKeys(), []);
    assert.ok(rekeyed.lowerBound()! > 100.5 && rekeyed.lowerBound()! < 100.50001);
  });

  test('survives a JSON round trip', () => {
    const cursor = Cursor.start('s', 'row-md5', 5, 30);
    cursor.advance([{ key: 'k', epoch: 7.123456 }]);
    const back = Cursor.from(JSON.parse(JSON.stringify(cursor)), 30);
    assert.deepEqual(back.toJSON(), cursor.toJSON());
  });
});

describe('CursorFile', () => {
  test('missing → null; save and load; a foreign file is refused with the variable named', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'banbus-cursor-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const file = new CursorFile(join(dir, 'sub', 'cursor.json'));
    assert.equal(await file.load(), null);
    const cursor = Cursor.start('s', 'row-md5', 1, 60);
    cursor.advance([{ key: 'k', epoch: 2 }]);
    await file.save(cursor.toJSON());
    assert.deepEqual(await file.load(), cursor.toJSON());
    assert.deepEqual(JSON.parse(await readFile(file.path, 'utf8')), cursor.toJSON());
    await writeFile(file.path, '{"half":');
    await assert.rejects(file.load(), (err: Error) => {
      assert.ok(err instanceof CursorFileError);
      assert.match(err.message, /THREECX_CURSOR_FILE .*remove it/);
      return true;
    });
  });
});

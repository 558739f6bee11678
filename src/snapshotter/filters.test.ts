import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseFilters } from './filters.ts';
import { InvalidArgumentError } from '../io/errors.ts';
import type { Info } from './snapshotter.ts';

const info = (over: Partial<Info>): Info => ({
  name: 'n',
  parent: '',
  kind: 'active',
  created: new Date(0),
  updated: new Date(0),
  labels: {},
  ...over,
});

const A = info({ name: 'a', parent: 'p', labels: { 'containerd.io/gc.root': 'x', 'a.b': '1', l: 'v,w' } });
const B = info({ name: 'b', kind: 'committed' });

test('parseFilters() matches everything for no filters or an empty one', () => {
  assert.ok(parseFilters()(A));
  assert.ok(parseFilters([''])(B));
  assert.ok(parseFilters(['name==zzz', ' '])(B), 'an empty filter in the list matches all');
});

test('parseFilters() ANDs selectors and ORs filters', () => {
  assert.ok(parseFilters(['kind==active,name==a'])(A));
  assert.ok(!parseFilters(['kind==active,name==b'])(A));
  assert.ok(parseFilters(['name==zzz', 'name==a'])(A));
});

test('parseFilters() reads quoted fields and values, presence, !=, ~= and dotted label keys', () => {
  assert.ok(parseFilters(['labels."containerd.io/gc.root"'])(A));
  assert.ok(!parseFilters(['labels."containerd.io/gc.root"'])(B));
  assert.ok(parseFilters(['labels.a.b==1'])(A), 'unquoted dotted keys join back with dots');
  assert.ok(parseFilters(['labels.l=="v,w"'])(A), 'a quoted value may contain commas');
  assert.ok(parseFilters(['parent!=""'])(A));
  assert.ok(!parseFilters(['parent!=""'])(B), 'a missing field compares as empty');
  assert.ok(parseFilters(['labels.missing!=x'])(A));
  assert.ok(parseFilters(['name~=^[ab]$'])(A));
  assert.ok(parseFilters(['name~=/^a\\/?$/'])(A), 'a /regexp/ value with an escaped slash');
  assert.ok(parseFilters(['name == a'])(A), 'spaces around operators');
  assert.ok(parseFilters(['name=="\\x61"'])(A), 'Go escapes in quoted strings');
  assert.ok(parseFilters(['kind'])(info({ name: 'x' })), 'kind is always present');
  assert.ok(!parseFilters(['nosuchfield'])(A));
});

test('parseFilters() rejects malformed filters with InvalidArgumentError', () => {
  for (const bad of ['name==', 'name==a,', ',', 'name=a', 'name=="open', 'name~=(', 'labels."x', 'name==a b', '==a', 'name=="\\q"']) {
    assert.throws(() => parseFilters([bad]), InvalidArgumentError, bad);
  }
});

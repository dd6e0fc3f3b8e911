import { describe, expect, it } from 'vitest'
import {
  CONVERSATIONS_ITEM,
  forgetAll,
  KEY_ITEM,
  loadJson,
  loadKey,
  saveKey,
  type StorageLike,
} from './storage'
import { apiBase, listOf } from '../api/client'
import { epochOf, namer, timeline } from './series'

function memory(): StorageLike & { items: Map<string, string> } {
  const items = new Map<string, string>()
  return {
    items,
    getItem: (k) => items.get(k) ?? null,
    setItem: (k, v) => void items.set(k, v),
    removeItem: (k) => void items.delete(k),
  }
}

describe('local storage', () => {
  it('keeps the key trimmed and forgets it with the conversations in one call', () => {
    const s = memory()
    expect(loadKey(s)).toBeNull()
    saveKey(s, '  rg_secret  ')
    expect(loadKey(s)).toBe('rg_secret')
    s.setItem(CONVERSATIONS_ITEM, '{}')
    s.setItem('other', 'kept')
    forgetAll(s)
    expect([...s.items.keys()]).toEqual(['other'])
    s.setItem(KEY_ITEM, '   ')
    expect(loadKey(s)).toBeNull()
  })

  it('bad JSON or a wrong shape falls back', () => {
    const s = memory()
    const isNumbers = (v: unknown): v is number[] =>
      Array.isArray(v) && v.every((x) => typeof x === 'number')
    s.setItem('x', '{broken')
    expect(loadJson(s, 'x', [0], isNumbers)).toEqual([0])
    s.setItem('x', '["a"]')
    expect(loadJson(s, 'x', [0], isNumbers)).toEqual([0])
    s.setItem('x', '[1,2]')
    expect(loadJson(s, 'x', [0], isNumbers)).toEqual([1, 2])
  })
})

describe('api helpers', () => {
  it('the API base is what precedes /ui (a mount prefix included)', () => {
    expect(apiBase({ origin: 'http://h:1', pathname: '/ui/keys' })).toBe('http://h:1')
    expect(apiBase({ origin: 'http://h:1', pathname: '/gw/ui/' })).toBe('http://h:1/gw')
    expect(apiBase({ origin: 'http://h:1', pathname: '/' })).toBe('http://h:1')
  })

  it('lists are found in bare or wrapped answers', () => {
    expect(listOf([{ a: 1 }])).toEqual([{ a: 1 }])
    expect(listOf({ object: 'list', data: [{ a: 2 }] })).toEqual([{ a: 2 }])
    expect(listOf({ nodes: [{ a: 3 }] })).toEqual([{ a: 3 }])
    expect(listOf(null)).toEqual([])
    expect(listOf({ message: 'x' })).toEqual([])
  })

  it('usage rows become a timeline in time order; ids become names', () => {
    expect(epochOf('2026-11-30')).toBe(Date.UTC(2026, 10, 30) / 1000)
    expect(epochOf('2026-11-30T02:00:00Z')).toBe(Date.UTC(2026, 10, 30, 2) / 1000)
    expect(epochOf('garbage')).toBeNull()
    const row = (day: string, requests: number) => ({ day, requests }) as never
    const { times, rows } = timeline(
      [row('2026-11-30', 2), row('bad', 9), row('2026-11-29', 1)],
      'day',
    )
    expect(times).toEqual([Date.UTC(2026, 10, 29) / 1000, Date.UTC(2026, 10, 30) / 1000])
    expect(rows.map((r) => (r as { requests: number }).requests)).toEqual([1, 2])
    const name = namer([{ id: 'k1', name: 'ci' }])
    expect([name('k1'), name('k2'), name(null)]).toEqual(['ci', 'k2', '(none)'])
  })
})

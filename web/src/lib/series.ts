/** Usage rows turned into chart series and readable names. */

import type { LatencyRow, Row } from '../api/client'

export type Range = '24h' | '7d' | '30d'
export const RANGES: { value: Range; label: string; bucket: 'hour' | 'day' }[] = [
  { value: '24h', label: 'Last 24 hours', bucket: 'hour' },
  { value: '7d', label: 'Last 7 days', bucket: 'day' },
  { value: '30d', label: 'Last 30 days', bucket: 'day' },
]

export function bucketOf(range: Range): 'hour' | 'day' {
  return RANGES.find((r) => r.value === range)?.bucket ?? 'day'
}

/** Seconds since the epoch of an hour ("2026-11-30T02:00:00Z") or a day ("2026-11-30"). */
export function epochOf(label: string | null | undefined): number | null {
  if (!label) return null
  const ms = Date.parse(label.length === 10 ? `${label}T00:00:00Z` : label)
  return Number.isNaN(ms) ? null : ms / 1000
}

/** Rows in time order with their times; rows without a parseable time are left out. */
export function timeline<T extends Row | LatencyRow>(
  rows: T[],
  field: 'hour' | 'day',
): { times: number[]; rows: T[] } {
  const pairs = rows
    .map((row) => ({
      row,
      t: epochOf((row as unknown as Record<string, string | undefined>)[field]),
    }))
    .filter((p): p is { row: T; t: number } => p.t !== null)
    .sort((a, b) => a.t - b.t)
  return { times: pairs.map((p) => p.t), rows: pairs.map((p) => p.row) }
}

/** A name for an id, from a list of {id, name}: "name" when known, else the id. */
export function namer(
  items: { id: string; name: string }[] | undefined,
): (id: string | null | undefined) => string {
  const names = new Map((items ?? []).map((i) => [i.id, i.name]))
  return (id) => {
    if (!id) return '(none)'
    const name = names.get(id)
    return name ? name : id
  }
}

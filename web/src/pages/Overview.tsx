/** Admin overview: requests, tokens, cost, cache hit rate, errors and latency percentiles
 * over a chosen range, and the top tenants, keys and models. Four API calls, whatever
 * the range: the usage report (rollups), latency percentiles (computed in the database),
 * and the key and tenant lists for names. */

import { useQuery } from '@tanstack/react-query'
import { useMemo, useState } from 'react'
import { api, type Row } from '../api/client'
import { TimeChart } from '../components/Chart'
import { ErrorNote, Loading, Section, Stat } from '../components/common'
import { formatCost, formatCount, formatMs, formatRate } from '../lib/format'
import { bucketOf, namer, RANGES, timeline, type Range } from '../lib/series'
import { useSession } from '../session'

export function RangePicker({ value, onChange }: { value: Range; onChange: (r: Range) => void }) {
  return (
    <label className="inline">
      Time range{' '}
      <select value={value} onChange={(e) => onChange(e.target.value as Range)}>
        {RANGES.map((r) => (
          <option key={r.value} value={r.value}>
            {r.label}
          </option>
        ))}
      </select>
    </label>
  )
}

export function Overview() {
  const session = useSession()
  const [range, setRange] = useState<Range>('24h')
  const bucket = bucketOf(range)
  const usage = useQuery({
    queryKey: ['usage', 'overview', range],
    queryFn: () => api.usage(session, { from: range }, bucket, 5),
    refetchInterval: 15_000,
  })
  const latency = useQuery({
    queryKey: ['latency', range],
    queryFn: () => api.latency(session, { from: range }, bucket),
    refetchInterval: 15_000,
  })
  const keys = useQuery({ queryKey: ['keys'], queryFn: () => api.keys(session) })
  const tenants = useQuery({ queryKey: ['tenants'], queryFn: () => api.tenants(session) })
  const keyName = namer(keys.data?.data.map((k) => ({ id: k.id, name: k.name || k.prefix })))
  const tenantName = namer(tenants.data?.data)

  const traffic = useMemo(() => {
    const { times, rows } = timeline(usage.data?.data ?? [], bucket)
    return {
      times,
      requests: [
        { label: 'Requests', values: rows.map((r) => r.requests), color: '#3b82f6' },
        { label: 'Errors', values: rows.map((r) => r.errors), color: '#ef4444' },
        { label: 'Cache hits', values: rows.map((r) => r.cached_requests), color: '#10b981' },
      ],
      tokens: [
        { label: 'Prompt tokens', values: rows.map((r) => r.prompt_tokens), color: '#8b5cf6' },
        {
          label: 'Completion tokens',
          values: rows.map((r) => r.completion_tokens),
          color: '#f59e0b',
        },
      ],
      cost: [{ label: 'Cost', values: rows.map((r) => r.cost), color: '#0ea5e9' }],
    }
  }, [usage.data, bucket])
  const percentiles = useMemo(() => {
    const { times, rows } = timeline(latency.data?.data ?? [], bucket)
    return {
      times,
      series: [
        { label: 'p50', values: rows.map((r) => r.duration_p50_ms), color: '#10b981' },
        { label: 'p90', values: rows.map((r) => r.duration_p90_ms), color: '#f59e0b' },
        { label: 'p99', values: rows.map((r) => r.duration_p99_ms), color: '#ef4444' },
        { label: 'TTFT p50', values: rows.map((r) => r.ttft_p50_ms), color: '#6366f1' },
      ],
    }
  }, [latency.data, bucket])

  const xRange = useMemo((): [number, number] => {
    const now = Date.now() / 1000
    const span = { '24h': 86_400, '7d': 7 * 86_400, '30d': 30 * 86_400 }[range]
    const step = bucket === 'hour' ? 3600 : 86_400
    return [Math.floor((now - span) / step) * step, Math.ceil(now / step) * step]
    // a new range each time the data arrives, so the window follows the clock
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [range, bucket, usage.dataUpdatedAt])
  const totals = usage.data?.totals
  return (
    <>
      <div className="toolbar">
        <RangePicker value={range} onChange={setRange} />
        <span className="muted">Refreshes every 15 s.</span>
      </div>
      <ErrorNote error={usage.error} what="Usage" />
      <ErrorNote error={latency.error} what="Latency" />
      {usage.isPending ? <Loading /> : null}
      {totals ? (
        <div className="stats" aria-label="Totals">
          <Stat label="Requests" value={formatCount(totals.requests)} />
          <Stat label="Tokens" value={formatCount(totals.total_tokens)} />
          <Stat label="Cost" value={formatCost(totals.cost)} />
          <Stat label="Cache hit rate" value={formatRate(totals.cache_hit_rate)} />
          <Stat label="Errors" value={formatCount(totals.errors)} />
        </div>
      ) : null}
      <div className="grid2">
        <TimeChart
          title="Requests, errors and cache hits"
          times={traffic.times}
          series={traffic.requests}
          format={formatCountOrDash}
          xRange={xRange}
        />
        <TimeChart
          title="Latency percentiles (answered requests)"
          times={percentiles.times}
          series={percentiles.series}
          format={formatMs}
          xRange={xRange}
        />
        <TimeChart
          title="Tokens"
          times={traffic.times}
          series={traffic.tokens}
          format={formatCountOrDash}
          xRange={xRange}
        />
        <TimeChart
          title="Cost (US dollars)"
          times={traffic.times}
          series={traffic.cost}
          format={formatCost}
          xRange={xRange}
        />
      </div>
      <div className="grid3">
        <TopTable
          title="Top tenants"
          rows={usage.data?.top_tenants}
          field="tenant"
          name={tenantName}
        />
        <TopTable title="Top keys" rows={usage.data?.top_keys} field="key" name={keyName} />
        <TopTable
          title="Top models"
          rows={usage.data?.top_models}
          field="model"
          name={(m) => m ?? '(no model)'}
        />
      </div>
    </>
  )
}

function formatCountOrDash(v: number | null): string {
  return formatCount(v)
}

function TopTable({
  title,
  rows,
  field,
  name,
}: {
  title: string
  rows: Row[] | undefined
  field: 'tenant' | 'key' | 'model'
  name: (id: string | null | undefined) => string
}) {
  return (
    <Section title={title}>
      {rows && rows.length ? (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">
                  {field === 'model' ? 'Model' : field === 'key' ? 'Key' : 'Tenant'}
                </th>
                <th scope="col" className="num">
                  Requests
                </th>
                <th scope="col" className="num">
                  Tokens
                </th>
                <th scope="col" className="num">
                  Cost
                </th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r, i) => (
                <tr key={`${r[field] ?? ''}-${i}`}>
                  <td className="wrap">{name(r[field])}</td>
                  <td className="num">{formatCount(r.requests)}</td>
                  <td className="num">{formatCount(r.total_tokens)}</td>
                  <td className="num">{formatCost(r.cost)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : (
        <p className="muted">No usage in this range.</p>
      )}
    </Section>
  )
}

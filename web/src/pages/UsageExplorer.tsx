/** Usage explorer: filter by tenant, key, model, endpoint and time, group by any of them,
 * export the matching records as CSV. One API call per filter change (plus the key and
 * tenant lists for the pickers), answered from the daily rollups. */

import { useMutation, useQuery } from '@tanstack/react-query'
import { useState, type FormEvent } from 'react'
import { api, type GroupBy, type UsageFilters } from '../api/client'
import { ErrorNote, Loading, Section, Stat } from '../components/common'
import { formatCost, formatCount, formatMs, formatRate } from '../lib/format'
import { namer } from '../lib/series'
import { useSession } from '../session'

const GROUPS: { value: GroupBy; label: string }[] = [
  { value: 'day', label: 'Day' },
  { value: 'hour', label: 'Hour' },
  { value: 'model', label: 'Model' },
  { value: 'key', label: 'Key' },
  { value: 'tenant', label: 'Tenant' },
  { value: 'endpoint', label: 'Endpoint' },
]

export function UsageExplorer() {
  const session = useSession()
  const [filters, setFilters] = useState<UsageFilters>({ from: '7d' })
  const [groupBy, setGroupBy] = useState<GroupBy>('day')
  const keys = useQuery({ queryKey: ['keys'], queryFn: () => api.keys(session) })
  const tenants = useQuery({ queryKey: ['tenants'], queryFn: () => api.tenants(session) })
  const report = useQuery({
    queryKey: ['usage', 'explore', filters, groupBy],
    queryFn: () => api.usage(session, filters, groupBy, 5),
  })
  const exporting = useMutation({
    mutationFn: async () => {
      const blob = await api.exportCsv(session, filters)
      const url = URL.createObjectURL(blob)
      const link = document.createElement('a')
      link.href = url
      link.download = 'relaygate-usage.csv'
      document.body.appendChild(link)
      link.click()
      link.remove()
      window.setTimeout(() => URL.revokeObjectURL(url), 1000)
    },
  })
  const keyName = namer(keys.data?.data.map((k) => ({ id: k.id, name: k.name || k.prefix })))
  const tenantName = namer(tenants.data?.data)
  const label = (value: string | null | undefined) =>
    groupBy === 'key'
      ? keyName(value)
      : groupBy === 'tenant'
        ? tenantName(value)
        : (value ?? '(none)')

  const apply = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault()
    const form = new FormData(event.currentTarget)
    const next: UsageFilters = {}
    for (const name of ['tenant', 'key', 'model', 'endpoint', 'from', 'to'] as const) {
      const value = String(form.get(name) ?? '').trim()
      if (value) next[name] = value
    }
    setFilters(next)
    setGroupBy(String(form.get('group_by')) as GroupBy)
  }

  return (
    <>
      <Section title="Filters">
        <form aria-label="Usage filters" onSubmit={apply} className="filters">
          <label>
            Tenant
            <select name="tenant" defaultValue="">
              <option value="">Any</option>
              {(tenants.data?.data ?? []).map((t) => (
                <option key={t.id} value={t.id}>
                  {t.name}
                </option>
              ))}
            </select>
          </label>
          <label>
            Key
            <select name="key" defaultValue="">
              <option value="">Any</option>
              {(keys.data?.data ?? []).map((k) => (
                <option key={k.id} value={k.id}>
                  {k.name || k.prefix} ({k.tenant_name})
                </option>
              ))}
            </select>
          </label>
          <label>
            Model
            <input name="model" placeholder="any" />
          </label>
          <label>
            Endpoint
            <input name="endpoint" placeholder="/v1/chat/completions" />
          </label>
          <label>
            From
            <input name="from" defaultValue="7d" placeholder="7d, 24h or 2026-11-01" />
          </label>
          <label>
            To
            <input name="to" placeholder="now" />
          </label>
          <label>
            Group by
            <select name="group_by" defaultValue="day">
              {GROUPS.map((g) => (
                <option key={g.value} value={g.value}>
                  {g.label}
                </option>
              ))}
            </select>
          </label>
          <div className="filter-buttons">
            <button type="submit">Apply filters</button>
            <button
              type="button"
              className="secondary"
              onClick={() => exporting.mutate()}
              disabled={exporting.isPending}
            >
              {exporting.isPending ? 'Exporting…' : 'Export CSV'}
            </button>
          </div>
        </form>
        <ErrorNote error={exporting.error} what="Export failed" />
      </Section>
      <ErrorNote error={report.error} what="Usage" />
      {report.isPending ? <Loading /> : null}
      {report.data ? (
        <>
          <div className="stats" aria-label="Totals">
            <Stat label="Requests" value={formatCount(report.data.totals.requests)} />
            <Stat label="Tokens" value={formatCount(report.data.totals.total_tokens)} />
            <Stat label="Cost" value={formatCost(report.data.totals.cost)} />
            <Stat label="Cache hit rate" value={formatRate(report.data.totals.cache_hit_rate)} />
            <Stat label="Errors" value={formatCount(report.data.totals.errors)} />
          </div>
          <Section title={`By ${groupBy}`}>
            <div className="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th scope="col">{GROUPS.find((g) => g.value === groupBy)?.label}</th>
                    <th scope="col" className="num">
                      Requests
                    </th>
                    <th scope="col" className="num">
                      Prompt tokens
                    </th>
                    <th scope="col" className="num">
                      Completion tokens
                    </th>
                    <th scope="col" className="num">
                      Avg time
                    </th>
                    <th scope="col" className="num">
                      Cache hits
                    </th>
                    <th scope="col" className="num">
                      Errors
                    </th>
                    <th scope="col" className="num">
                      Cost
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {report.data.data.map((r, i) => (
                    <tr key={`${r[groupBy] ?? ''}-${i}`}>
                      <th scope="row" className="wrap">
                        {label(r[groupBy])}
                      </th>
                      <td className="num">{formatCount(r.requests)}</td>
                      <td className="num">{formatCount(r.prompt_tokens)}</td>
                      <td className="num">{formatCount(r.completion_tokens)}</td>
                      <td className="num">{formatMs(r.average_response_time_ms)}</td>
                      <td className="num">{formatRate(r.cache_hit_rate)}</td>
                      <td className="num">{formatCount(r.errors)}</td>
                      <td className="num">{formatCost(r.cost)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            {report.data.data.length === 0 ? (
              <p className="muted">No usage matches these filters.</p>
            ) : null}
          </Section>
        </>
      ) : null}
    </>
  )
}

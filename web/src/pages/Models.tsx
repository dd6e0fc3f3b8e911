/** Models and nodes: every model, its deployments and their health, the last day's
 * traffic and latency per model, and the node pools when the gateway has them
 * (GET /admin/nodes; a 404 means none are configured). Three API calls. */

import { useQuery } from '@tanstack/react-query'
import { api, listOf, type Json } from '../api/client'
import { Badge, ErrorNote, Loading, Section } from '../components/common'
import { formatCost, formatCount, formatMs, formatRate, formatTime } from '../lib/format'
import { useSession } from '../session'

function tone(state: string): 'ok' | 'warn' | 'bad' | 'off' {
  const s = state.toLowerCase()
  if (['healthy', 'ok', 'up', 'ready', 'closed'].includes(s)) return 'ok'
  if (['degraded', 'half_open', 'half-open', 'probing', 'busy', 'warming'].includes(s))
    return 'warn'
  if (['unhealthy', 'open', 'down', 'ejected', 'offline', 'failed'].includes(s)) return 'bad'
  return 'off'
}

export function Models() {
  const session = useSession()
  const deployments = useQuery({
    queryKey: ['deployments'],
    queryFn: () => api.deployments(session),
    refetchInterval: 15_000,
  })
  const traffic = useQuery({
    queryKey: ['usage', 'by-model', '24h'],
    queryFn: () => api.usage(session, { from: '24h' }, 'model', 1),
  })
  const nodes = useQuery({
    queryKey: ['nodes'],
    queryFn: () => api.nodes(session),
    refetchInterval: 15_000,
  })
  const byModel = new Map((traffic.data?.data ?? []).map((r) => [r.model ?? '', r]))

  return (
    <>
      <Section title="Models and deployments">
        <ErrorNote error={deployments.error} what="Deployments" />
        {deployments.isPending ? <Loading /> : null}
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Model</th>
                <th scope="col">Deployment</th>
                <th scope="col">Provider</th>
                <th scope="col">Health</th>
                <th scope="col">Last error</th>
                <th scope="col" className="num">
                  Requests (24 h)
                </th>
                <th scope="col" className="num">
                  Avg latency
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
              {(deployments.data?.data ?? []).flatMap((m) =>
                m.deployments.map((d, i) => {
                  const figures = byModel.get(m.model)
                  return (
                    <tr key={`${m.model}/${d.name}`}>
                      {i === 0 ? (
                        <th scope="rowgroup" rowSpan={m.deployments.length} className="wrap">
                          {m.model}
                        </th>
                      ) : null}
                      <td className="wrap mono small">{d.name}</td>
                      <td>{d.provider}</td>
                      <td>
                        <Badge tone={tone(d.state)}>{d.state}</Badge>
                        {d.consecutive_failures ? (
                          <div className="muted small">
                            {d.consecutive_failures} failures in a row
                          </div>
                        ) : null}
                      </td>
                      <td className="wrap small">
                        {d.last_error ? (
                          <>
                            {d.last_error_class}: {d.last_error}
                            <div className="muted">{formatTime(d.last_error_at)}</div>
                          </>
                        ) : (
                          <span className="muted">none</span>
                        )}
                      </td>
                      {i === 0 ? (
                        <>
                          <td rowSpan={m.deployments.length} className="num">
                            {formatCount(figures?.requests ?? 0)}
                          </td>
                          <td rowSpan={m.deployments.length} className="num">
                            {formatMs(figures?.average_response_time_ms)}
                          </td>
                          <td rowSpan={m.deployments.length} className="num">
                            {formatCount(figures?.errors ?? 0)}
                            {figures?.requests ? (
                              <div className="muted small">
                                {formatRate(figures.errors / figures.requests)}
                              </div>
                            ) : null}
                          </td>
                          <td rowSpan={m.deployments.length} className="num">
                            {formatCost(figures?.cost ?? 0)}
                          </td>
                        </>
                      ) : null}
                    </tr>
                  )
                }),
              )}
            </tbody>
          </table>
        </div>
        <p className="muted small">
          Health is the answering worker's view; it refreshes every 15 s.
        </p>
      </Section>
      <Section title="Nodes">
        <ErrorNote error={nodes.error} what="Nodes" />
        {nodes.isPending ? (
          <Loading />
        ) : nodes.data === null ? (
          <p className="muted">
            No node pools are configured on this gateway (GET /admin/nodes is not served).
          </p>
        ) : (
          <NodeTable nodes={listOf(nodes.data)} />
        )}
      </Section>
    </>
  )
}

// GET /admin/nodes: one row per node (docs/nodes.md); dial-out nodes say so.
const NODE_COLUMNS: { label: string; keys: string[] }[] = [
  { label: 'Node', keys: ['node'] },
  { label: 'State', keys: ['state'] },
  { label: 'Why', keys: ['reason', 'last_error'] },
  { label: 'Pool', keys: ['pool'] },
  { label: 'Address', keys: ['address'] },
  { label: 'Models', keys: ['models'] },
  { label: 'Loaded', keys: ['loaded'] },
  { label: 'In flight', keys: ['in_flight'] },
  { label: 'Queue', keys: ['queued'] },
  { label: 'TTFT (EWMA)', keys: ['ttft_ewma_ms'] },
]

function cell(node: Json, keys: string[]): string {
  for (const k of keys) {
    const v = node[k]
    if (v === undefined || v === null) continue
    if (Array.isArray(v))
      return (
        v
          .map((x) =>
            typeof x === 'object' && x ? String((x as Json).name ?? JSON.stringify(x)) : String(x),
          )
          .join(', ') || '—'
      )
    if (typeof v === 'number' && /_ms$/.test(k)) return formatMs(v)
    if (typeof v === 'object') return JSON.stringify(v)
    return String(v)
  }
  return '—'
}

function NodeTable({ nodes }: { nodes: Json[] }) {
  if (!nodes.length)
    return (
      <p className="muted">
        No nodes: no pool is configured and no node has dialed out (docs/nodes.md).
      </p>
    )
  return (
    <div className="table-wrap">
      <table>
        <thead>
          <tr>
            {NODE_COLUMNS.map((c) => (
              <th scope="col" key={c.label}>
                {c.label}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {nodes.map((n, i) => (
            <tr key={i}>
              {NODE_COLUMNS.map((c, j) =>
                j === 1 ? (
                  <td key={c.label}>
                    <Badge tone={tone(cell(n, c.keys))}>{cell(n, c.keys)}</Badge>
                  </td>
                ) : (
                  <td key={c.label} className="wrap">
                    {cell(n, c.keys)}
                  </td>
                ),
              )}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  )
}

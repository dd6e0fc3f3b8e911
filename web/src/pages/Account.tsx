/** A key's own view: its usage, its remaining limits, and its provider keys (masked)
 * and provider configurations when the gateway has the vault. Four API calls. */

import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query'
import type { FormEvent, ReactNode } from 'react'
import { api, ApiError, listOf, type LimitFigure, type Json } from '../api/client'
import { ErrorNote, Loading, Section, Stat } from '../components/common'
import {
  formatCost,
  formatCount,
  formatMs,
  formatRate,
  formatTime,
  limitLabel,
} from '../lib/format'
import { useSession } from '../session'

function isFigure(value: unknown): value is LimitFigure {
  return !!value && typeof value === 'object' && 'used' in value && 'limit' in value
}

export function Account() {
  const session = useSession()
  const limits = useQuery({
    queryKey: ['my-limits'],
    queryFn: () => api.myLimits(session),
    refetchInterval: 15_000,
  })
  const stats = useQuery({
    queryKey: ['my-stats'],
    queryFn: () => api.myStats(session),
    refetchInterval: 15_000,
  })
  const providerKeys = useQuery({
    queryKey: ['provider-keys'],
    queryFn: () => api.providerKeys(session),
  })
  const configs = useQuery({
    queryKey: ['provider-configs'],
    queryFn: () => api.providerConfigs(session),
  })

  const figures = Object.entries(limits.data ?? {}).filter((e): e is [string, LimitFigure] =>
    isFigure(e[1]),
  )
  return (
    <>
      <Section title="My usage">
        {stats.error instanceof ApiError && stats.error.status === 400 ? (
          <p className="muted">{stats.error.message}</p>
        ) : (
          <ErrorNote error={stats.error} what="Usage" />
        )}
        {stats.isPending ? <Loading /> : null}
        {stats.data ? (
          <>
            <div className="stats">
              <Stat label="Requests" value={formatCount(stats.data.requests)} />
              <Stat label="Tokens" value={formatCount(stats.data.total_tokens)} />
              <Stat label="Cost" value={formatCost(stats.data.cost)} />
              <Stat
                label="Avg response time"
                value={formatMs(stats.data.average_response_time_ms)}
              />
              <Stat label="Cache hit rate" value={formatRate(stats.data.cache_hit_rate)} />
              <Stat label="Errors" value={formatCount(stats.data.errors)} />
            </div>
            <div className="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th scope="col">Model</th>
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
                  {Object.entries(stats.data.by_model).map(([model, f]) => (
                    <tr key={model}>
                      <th scope="row">{model || '(no model)'}</th>
                      <td className="num">{formatCount(f.requests)}</td>
                      <td className="num">{formatCount(f.total_tokens)}</td>
                      <td className="num">{formatCost(f.cost)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </>
        ) : null}
      </Section>
      <Section title="My limits">
        <ErrorNote error={limits.error} what="Limits" />
        {limits.data ? (
          <p>
            Tier: <strong>{limits.data.tier}</strong>
          </p>
        ) : null}
        {figures.length ? (
          <ul className="limits-list">
            {figures.map(([name, f]) => {
              const money = name.startsWith('budget_')
              const show = (v: number | null) => (money ? formatCost(v) : formatCount(v))
              const share = f.limit ? Math.min(1, f.used / f.limit) : 0
              return (
                <li key={name}>
                  <div className="limit-head">
                    <span>{limitLabel(name)}</span>
                    <span>
                      {f.limit == null
                        ? 'no limit'
                        : `${show(f.remaining)} left of ${show(f.limit)}`}
                    </span>
                  </div>
                  {f.limit != null ? (
                    <progress
                      max={1}
                      value={share}
                      aria-label={`${limitLabel(name)}: ${show(f.used)} used`}
                    />
                  ) : null}
                  {f.window_reset ? (
                    <div className="muted small">Resets {formatTime(f.window_reset)}</div>
                  ) : null}
                </li>
              )
            })}
          </ul>
        ) : limits.isPending ? (
          <Loading />
        ) : null}
      </Section>
      <div className="grid2">
        <Section title="My provider keys">
          <ErrorNote error={providerKeys.error} what="Provider keys" />
          {providerKeys.isPending ? (
            <Loading />
          ) : providerKeys.data === null ? (
            <p className="muted">
              This gateway does not keep users' provider keys (the vault is not enabled).
            </p>
          ) : (
            <ProviderKeys items={listOf(providerKeys.data)} />
          )}
        </Section>
        <Section title="My provider configurations">
          <ErrorNote error={configs.error} what="Provider configurations" />
          {configs.isPending ? (
            <Loading />
          ) : configs.data === null ? (
            <p className="muted">This gateway has no per-user provider configurations.</p>
          ) : (
            <ItemList
              items={listOf(configs.data)}
              fields={['provider_type', 'is_default', 'config', 'api_key_id']}
              empty="No provider configurations."
            />
          )}
        </Section>
      </div>
    </>
  )
}

/** Items of an API we only read, their known fields shown; secrets come masked from the server. */
function ItemList({
  items,
  fields,
  empty,
  action,
}: {
  items: Json[]
  fields: string[]
  empty: string
  action?: (item: Json) => ReactNode
}) {
  if (!items.length) return <p className="muted">{empty}</p>
  const shown = fields.filter((f) => items.some((i) => i[f] !== undefined))
  return (
    <div className="table-wrap">
      <table>
        <thead>
          <tr>
            {shown.map((f) => (
              <th scope="col" key={f}>
                {f.replace(/_/g, ' ')}
              </th>
            ))}
            {action ? <th scope="col">Actions</th> : null}
          </tr>
        </thead>
        <tbody>
          {items.map((item, i) => (
            <tr key={i}>
              {shown.map((f) => {
                const v = item[f]
                const text = v == null ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v)
                return (
                  <td key={f} className="wrap mono small">
                    {f.endsWith('_at') && typeof v === 'string' ? formatTime(v) : text}
                  </td>
                )
              })}
              {action ? <td>{action(item)}</td> : null}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  )
}

const PROVIDERS = ['openai', 'gemini', 'anthropic', 'openwebui', 'ollama', 'openai-compatible']

/** The user's own provider keys (the vault): listed masked, as the server sends them;
 * added (the secret goes to the gateway once and is never shown again) and deleted. */
function ProviderKeys({ items }: { items: Json[] }) {
  const session = useSession()
  const client = useQueryClient()
  const refresh = () => client.invalidateQueries({ queryKey: ['provider-keys'] })
  const add = useMutation({
    mutationFn: (form: FormData) =>
      api.addProviderKey(session, {
        provider: String(form.get('provider')),
        key_name: String(form.get('key_name') ?? '').trim(),
        api_key: String(form.get('api_key') ?? ''),
      }),
    onSuccess: refresh,
  })
  const remove = useMutation({
    mutationFn: (id: string) => api.deleteProviderKey(session, id),
    onSuccess: refresh,
  })
  const idOf = (item: Json) => String(item.id ?? item.key_id ?? '')
  return (
    <>
      <ItemList
        items={items}
        fields={['provider', 'key_name', 'masked_key', 'api_key', 'expires_at', 'last_used_at']}
        empty="No provider keys stored."
        action={(item) =>
          idOf(item) ? (
            <button
              type="button"
              className="danger small"
              aria-label={`Delete provider key ${String(item.key_name ?? idOf(item))}`}
              onClick={() => remove.mutate(idOf(item))}
            >
              Delete
            </button>
          ) : null
        }
      />
      <ErrorNote error={remove.error} what="Not deleted" />
      <details>
        <summary>Add a provider key</summary>
        <form
          aria-label="Add a provider key"
          onSubmit={(e: FormEvent<HTMLFormElement>) => {
            e.preventDefault()
            const form = e.currentTarget
            add.mutate(new FormData(form), { onSuccess: () => form.reset() })
          }}
        >
          <div className="row">
            <label>
              Provider
              <select name="provider" defaultValue="openai">
                {PROVIDERS.map((p) => (
                  <option key={p} value={p}>
                    {p}
                  </option>
                ))}
              </select>
            </label>
            <label>
              Name
              <input name="key_name" required maxLength={200} />
            </label>
          </div>
          <label>
            Secret (sent once, stored encrypted, never shown again)
            <input name="api_key" type="password" autoComplete="off" required />
          </label>
          <button type="submit" disabled={add.isPending}>
            Add key
          </button>
          <ErrorNote error={add.error} what="Not added" />
        </form>
      </details>
    </>
  )
}

/** The one client of relaygate's APIs: one typed function per route, the key in the
 * Authorization header, errors in one shape. Nothing else in the UI calls fetch(),
 * except the playground's stream (api/chat.ts). */

import type { OidcConfig } from '../lib/oidc'

/** Whether asking again may succeed: not there yet (404), too early or too many (408, 429),
 * or the gateway's side failing (5xx). */
export function retryable(status: number): boolean {
  return status === 404 || status === 408 || status === 429 || status >= 500
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | null = null,
  ) {
    super(message)
  }
}

export interface Session {
  /** The gateway's address as this page sees it (a mount prefix included). */
  base: string
  key: string
}

/** Where the API is: everything before /ui in the page's path. */
export function apiBase(location: { origin: string; pathname: string }): string {
  const at = location.pathname.indexOf('/ui')
  return location.origin + (at > 0 ? location.pathname.slice(0, at) : '')
}

export async function errorFrom(response: Response): Promise<ApiError> {
  let message = `${response.status} ${response.statusText}`.trim()
  let code: string | null = null
  try {
    const body = (await response.json()) as { error?: { message?: string; code?: string } | string }
    if (typeof body.error === 'string') message = body.error
    else if (body.error?.message) {
      message = body.error.message
      code = body.error.code ?? null
    }
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(message, response.status, code)
}

export function headers(session: Session, json = false): Record<string, string> {
  const out: Record<string, string> = { Authorization: `Bearer ${session.key}` }
  if (json) out['Content-Type'] = 'application/json'
  return out
}

async function call<T>(session: Session, method: string, path: string, body?: unknown): Promise<T> {
  let response: Response
  try {
    response = await fetch(session.base + path, {
      method,
      headers: headers(session, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  } catch {
    throw new ApiError('The gateway could not be reached.', 0)
  }
  if (!response.ok) throw await errorFrom(response)
  return (await response.json()) as T
}

/** A route another feature adds (nodes, provider keys): null while it is not there. */
async function optional<T>(session: Session, path: string): Promise<T | null> {
  try {
    return await call<T>(session, 'GET', path)
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) return null
    throw error
  }
}

function query(params: Record<string, string | undefined>): string {
  const entries = Object.entries(params).filter((e): e is [string, string] => !!e[1])
  return entries.length ? `?${new URLSearchParams(entries).toString()}` : ''
}

// ---- shapes ----------------------------------------------------------------------------

export type Role = 'admin' | 'user'

export interface Limits {
  requests_per_minute?: number | null
  requests_per_hour?: number | null
  requests_per_month?: number | null
  tokens_per_minute?: number | null
  tokens_per_month?: number | null
  max_concurrent?: number | null
  budget_per_month?: number | null
}

export interface Key {
  id: string
  tenant_id: string
  tenant_name: string
  prefix: string
  name: string
  description: string
  role: Role
  tier: string
  limits: Limits | null
  enabled: boolean
  expires_at: string | null
  last_used_at: string | null
  created_at: string
  revoked: boolean
}

export interface Tenant {
  id: string
  name: string
  tier: string | null
  created_at: string
}

export interface Figures {
  requests: number
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
  average_response_time_ms: number | null
  cached_requests: number
  cache_hit_rate: number | null
  errors: number
  cost: number
}

export type GroupBy = 'hour' | 'day' | 'model' | 'key' | 'tenant' | 'endpoint'
export type Row = Figures & Partial<Record<GroupBy, string | null>>

export interface UsageReport {
  group_by: GroupBy
  data: Row[]
  totals: {
    requests: number
    total_tokens: number
    cached_requests: number
    cache_hit_rate: number | null
    errors: number
    cost: number
  }
  top_tenants: Row[]
  top_keys: Row[]
  top_models?: Row[]
}

export interface LatencyRow {
  hour?: string
  day?: string
  requests: number
  duration_p50_ms: number | null
  duration_p90_ms: number | null
  duration_p99_ms: number | null
  ttft_p50_ms: number | null
  ttft_p90_ms: number | null
  ttft_p99_ms: number | null
}

export interface UsageFilters {
  tenant?: string
  key?: string
  model?: string
  endpoint?: string
  from?: string
  to?: string
}

export interface Deployment {
  name: string
  provider: string
  state: string
  consecutive_failures: number
  last_error_class: string | null
  last_error: string | null
  last_error_at: string | null
}

export interface ModelDeployments {
  model: string
  deployments: Deployment[]
}

export type Json = Record<string, unknown>

export interface LimitFigure {
  used: number
  limit: number | null
  remaining: number | null
  window_reset: string | null
}

export type MyLimits = { tier: string } & Record<string, unknown>

export interface MyStats extends Figures {
  key_id: string
  by_model: Record<string, Figures>
}

export interface UsageRecord {
  request_id: string
  prompt_tokens: number
  completion_tokens: number
  cost: number
  duration_ms: number
  ttft_ms: number | null
  status: string
  cached: boolean
}

export interface KeyFields {
  tenant_id: string
  name?: string
  description?: string
  role?: Role
  tier?: string
  limits?: Limits
  expires_in_days?: number
  expires_at?: string
}

export type KeyPatch = Partial<{
  enabled: boolean
  tier: string
  limits: Limits | null
  expires_at: string | null
  name: string
  role: Role
}>

// ---- routes ----------------------------------------------------------------------------

export const api = {
  /** What the page cannot know by itself: the OIDC sign-in, when configured (no key). */
  async uiConfig(base: string): Promise<{ oidc: OidcConfig | null }> {
    const response = await fetch(`${base}/ui/config.json`)
    if (!response.ok) throw await errorFrom(response)
    return (await response.json()) as { oidc: OidcConfig | null }
  },
  /** Who the key is: admin (the admin API answers), user (403), or an error (401...). */
  async role(s: Session): Promise<Role> {
    try {
      await call(s, 'GET', '/admin/cache')
      return 'admin'
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) return 'user'
      throw error
    }
  },
  models: (s: Session) => call<{ data: { id: string }[] }>(s, 'GET', '/v1/models'),
  myLimits: (s: Session) => call<MyLimits>(s, 'GET', '/usage'),
  myStats: (s: Session) => call<MyStats>(s, 'GET', '/api/stats'),
  usageRecord: (s: Session, requestId: string) =>
    call<UsageRecord>(s, 'GET', `/usage/requests/${encodeURIComponent(requestId)}`),

  keys: (s: Session) => call<{ data: Key[] }>(s, 'GET', '/admin/keys?include_revoked=true'),
  createKey: (s: Session, body: KeyFields) =>
    call<{ key: Key; api_key: string }>(s, 'POST', '/admin/keys', body),
  importKey: (s: Session, body: KeyFields & { secret: string }) =>
    call<{ key: Key; imported: boolean }>(s, 'POST', '/admin/keys/import', body),
  patchKey: (s: Session, id: string, body: KeyPatch) =>
    call<Key>(s, 'PATCH', `/admin/keys/${encodeURIComponent(id)}`, body),
  revokeKey: (s: Session, id: string) =>
    call<Key>(s, 'DELETE', `/admin/keys/${encodeURIComponent(id)}`),
  rotateKey: (s: Session, id: string) =>
    call<{ key: Key; api_key: string }>(s, 'POST', `/admin/keys/${encodeURIComponent(id)}/rotate`),
  tenants: (s: Session) => call<{ data: Tenant[] }>(s, 'GET', '/admin/tenants'),
  createTenant: (s: Session, body: { name: string; tier?: string }) =>
    call<Tenant>(s, 'POST', '/admin/tenants', body),
  patchTenant: (s: Session, id: string, body: { name?: string; tier?: string | null }) =>
    call<Tenant>(s, 'PATCH', `/admin/tenants/${encodeURIComponent(id)}`, body),

  usage: (s: Session, filters: UsageFilters, groupBy: GroupBy, top = 5) =>
    call<UsageReport>(
      s,
      'GET',
      `/admin/usage${query({ ...filters, group_by: groupBy, top: String(top) })}`,
    ),
  latency: (s: Session, filters: UsageFilters, bucket: 'hour' | 'day') =>
    call<{ bucket: string; data: LatencyRow[] }>(
      s,
      'GET',
      `/admin/usage/latency${query({ ...filters, bucket })}`,
    ),
  async exportCsv(s: Session, filters: UsageFilters): Promise<Blob> {
    const response = await fetch(`${s.base}/admin/usage/export.csv${query({ ...filters })}`, {
      headers: headers(s),
    })
    if (!response.ok) throw await errorFrom(response)
    return await response.blob()
  },
  deployments: (s: Session) => call<{ data: ModelDeployments[] }>(s, 'GET', '/admin/deployments'),
  nodes: (s: Session) => optional<{ data?: Json[]; nodes?: Json[] } | Json[]>(s, '/admin/nodes'),
  providerKeys: (s: Session) => optional<unknown>(s, '/api/ai/api-keys'),
  addProviderKey: (s: Session, body: { provider: string; key_name: string; api_key: string }) =>
    call<Json>(s, 'POST', '/api/ai/api-keys', body),
  deleteProviderKey: (s: Session, id: string) =>
    call<Json>(s, 'DELETE', `/api/ai/api-keys/${encodeURIComponent(id)}`),
  providerConfigs: (s: Session) => optional<unknown>(s, '/api/ai/provider-configs'),
}

/** A list from an answer that may be a bare array or wrap it (data, nodes, keys, configs...). */
export function listOf(value: unknown): Json[] {
  if (Array.isArray(value)) return value as Json[]
  if (value && typeof value === 'object') {
    for (const item of Object.values(value as Json)) if (Array.isArray(item)) return item as Json[]
  }
  return []
}

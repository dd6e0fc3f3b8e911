/** How figures are shown: counts, tokens, money, durations, rates, times. */

export function formatCount(value: number | null | undefined): string {
  if (value == null) return '—'
  if (Math.abs(value) >= 1e9) return `${trim(value / 1e9)}B`
  if (Math.abs(value) >= 1e6) return `${trim(value / 1e6)}M`
  if (Math.abs(value) >= 1e4) return `${trim(value / 1e3)}k`
  return value.toLocaleString('en-US')
}

function trim(value: number): string {
  return value.toFixed(value >= 100 ? 0 : 1).replace(/\.0$/, '')
}

/** US dollars; small figures keep enough digits to be seen (a token costs micro-dollars). */
export function formatCost(value: number | null | undefined): string {
  if (value == null) return '—'
  if (value === 0) return '$0'
  const abs = Math.abs(value)
  if (abs >= 100) return `$${value.toFixed(0)}`
  if (abs >= 1) return `$${value.toFixed(2)}`
  if (abs >= 0.01) return `$${value.toFixed(4)}`
  return `$${value.toPrecision(2)}`
}

export function formatMs(value: number | null | undefined): string {
  if (value == null) return '—'
  if (value >= 10_000) return `${(value / 1000).toFixed(1)} s`
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`
  return `${Math.round(value)} ms`
}

export function formatRate(value: number | null | undefined): string {
  if (value == null) return '—'
  return `${(value * 100).toFixed(value === 0 || value === 1 ? 0 : 1)}%`
}

/** A timestamp as a short local date and time; "never" for none. */
export function formatTime(value: string | null | undefined, none = 'never'): string {
  if (!value) return none
  const date = new Date(value)
  if (Number.isNaN(date.getTime())) return value
  return date.toLocaleString(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
  })
}

/** "12 tokens in · 30 out" under a reply. */
export function formatTokens(prompt: number, completion: number): string {
  return `${formatCount(prompt)} in · ${formatCount(completion)} out`
}

/** A key's secret shown masked: its first 8 characters and its last 4. */
export function maskSecret(secret: string): string {
  if (secret.length <= 12) return '•'.repeat(secret.length)
  return `${secret.slice(0, 8)}…${secret.slice(-4)}`
}

/** Names of the limits a key's /auth/limits lists. */
const LIMIT_NAMES: Record<string, string> = {
  requests_per_minute: 'Requests this minute',
  requests_per_hour: 'Requests this hour',
  requests_per_month: 'Requests this month',
  tokens_per_minute: 'Tokens this minute',
  tokens_per_month: 'Tokens this month',
  max_concurrent: 'Concurrent requests',
  budget_per_month: 'Budget this month',
}

const TENANT_SUFFIX = ' for tenant'

/** "requests_per_month for tenant" (the tenant's own limit) → "Requests this month (tenant)". */
export function limitLabel(name: string): string {
  const tenant = name.endsWith(TENANT_SUFFIX)
  const rule = tenant ? name.slice(0, -TENANT_SUFFIX.length) : name
  const label = LIMIT_NAMES[rule] ?? rule
  return tenant ? `${label} (tenant)` : label
}

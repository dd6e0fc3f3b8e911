/** Small pieces every page uses: errors, loading, copy, figures. */

import { useState, type ReactNode } from 'react'
import { ApiError } from '../api/client'

export function ErrorNote({ error, what }: { error: unknown; what?: string }) {
  if (!error) return null
  const message = error instanceof Error ? error.message : String(error)
  const status = error instanceof ApiError && error.status ? ` (${error.status})` : ''
  return (
    <p role="alert" className="error">
      {what ? `${what}: ` : ''}
      {message}
      {status}
    </p>
  )
}

/**
 * Why a page that sends to a model cannot send yet: the key's model list is still loading,
 * failed to load, or is empty. A send pressed meanwhile keeps its draft (nothing is lost).
 */
export function ModelsNote({
  models,
}: {
  models: { isPending: boolean; error: unknown; data?: { data: unknown[] } }
}) {
  if (models.error) return <ErrorNote error={models.error} what="Models" />
  if (models.isPending) return <Loading label="Loading the models this key may use…" />
  if (models.data && models.data.data.length === 0)
    return (
      <p className="error" role="alert">
        This key may use no model.
      </p>
    )
  return null
}

export function Loading({ label = 'Loading…' }: { label?: string }) {
  return (
    <p className="muted" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" /> {label}
    </p>
  )
}

export function CopyButton({ text, label = 'Copy' }: { text: string; label?: string }) {
  const [copied, setCopied] = useState(false)
  return (
    <button
      type="button"
      className="secondary small"
      onClick={async () => {
        try {
          await navigator.clipboard.writeText(text)
        } catch {
          /* a page not served over https or localhost has no clipboard: select instead */
          const area = document.createElement('textarea')
          area.value = text
          document.body.appendChild(area)
          area.select()
          document.execCommand('copy')
          area.remove()
        }
        setCopied(true)
        window.setTimeout(() => setCopied(false), 1500)
      }}
    >
      {copied ? 'Copied' : label}
    </button>
  )
}

export function Stat({ label, value, hint }: { label: string; value: ReactNode; hint?: string }) {
  return (
    <div className="stat">
      <div className="stat-label">{label}</div>
      <div className="stat-value">{value}</div>
      {hint ? <div className="stat-hint muted">{hint}</div> : null}
    </div>
  )
}

export function Section({
  title,
  children,
  actions,
}: {
  title: string
  children: ReactNode
  actions?: ReactNode
}) {
  return (
    <section className="card" aria-label={title}>
      <div className="card-head">
        <h2>{title}</h2>
        {actions}
      </div>
      {children}
    </section>
  )
}

/** A state shown as a coloured word (never colour alone). */
export function Badge({
  tone,
  children,
}: {
  tone: 'ok' | 'warn' | 'bad' | 'off'
  children: ReactNode
}) {
  return <span className={`badge ${tone}`}>{children}</span>
}

/** Keys and tenants: create (the secret shown once), import, list, search, disable,
 * rotate, revoke, and change tier, limits and expiry. Two API calls to load. */

import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query'
import { useId, useState, type FormEvent } from 'react'
import { api, type Key, type KeyFields, type Limits, type Role } from '../api/client'
import { Badge, CopyButton, ErrorNote, Loading, Section } from '../components/common'
import { formatTime } from '../lib/format'
import { useSession } from '../session'

const DEFAULT_TIERS = ['free', 'pro', 'enterprise', 'unlimited']
const LIMIT_FIELDS: { name: keyof Limits; label: string }[] = [
  { name: 'requests_per_minute', label: 'Requests per minute' },
  { name: 'requests_per_hour', label: 'Requests per hour' },
  { name: 'requests_per_month', label: 'Requests per month' },
  { name: 'tokens_per_minute', label: 'Tokens per minute' },
  { name: 'tokens_per_month', label: 'Tokens per month' },
  { name: 'max_concurrent', label: 'Concurrent requests' },
  { name: 'budget_per_month', label: 'Budget per month (US$)' },
]

function limitsFrom(form: FormData): Limits | undefined {
  const limits: Limits = {}
  for (const { name } of LIMIT_FIELDS) {
    const raw = String(form.get(name) ?? '').trim()
    if (raw) limits[name] = Number(raw)
  }
  return Object.keys(limits).length ? limits : undefined
}

export function Keys() {
  const session = useSession()
  const client = useQueryClient()
  const keys = useQuery({ queryKey: ['keys'], queryFn: () => api.keys(session) })
  const tenants = useQuery({ queryKey: ['tenants'], queryFn: () => api.tenants(session) })
  const [search, setSearch] = useState('')
  const [showRevoked, setShowRevoked] = useState(false)
  const [secret, setSecret] = useState<{ what: string; value: string } | null>(null)
  const [editing, setEditing] = useState<string | null>(null)
  const refresh = () => client.invalidateQueries({ queryKey: ['keys'] })

  const tiers = Array.from(
    new Set([...DEFAULT_TIERS, ...(keys.data?.data.map((k) => k.tier) ?? [])]),
  )
  const needle = search.trim().toLowerCase()
  const shown = (keys.data?.data ?? []).filter(
    (k) =>
      (showRevoked || !k.revoked) &&
      (!needle ||
        [k.name, k.id, k.prefix, k.tenant_name, k.tier, k.role].some(
          (v) => v && v.toLowerCase().includes(needle),
        )),
  )

  const action = useMutation({
    mutationFn: async ({
      key,
      what,
    }: {
      key: Key
      what: 'disable' | 'enable' | 'rotate' | 'revoke'
    }) => {
      if (what === 'rotate') {
        const rotated = await api.rotateKey(session, key.id)
        setSecret({
          what: `New secret of “${key.name || key.prefix}” (the old one no longer works)`,
          value: rotated.api_key,
        })
      } else if (what === 'revoke') {
        await api.revokeKey(session, key.id)
      } else {
        await api.patchKey(session, key.id, { enabled: what === 'enable' })
      }
    },
    onSuccess: refresh,
  })

  return (
    <>
      {secret ? (
        <section className="card secret" aria-label="New secret" role="region">
          <h2>{secret.what}</h2>
          <p>Copy it now: it is shown this once and cannot be read again.</p>
          <div className="secret-row">
            <code data-testid="new-secret">{secret.value}</code>
            <CopyButton text={secret.value} label="Copy secret" />
            <button type="button" className="secondary small" onClick={() => setSecret(null)}>
              Done
            </button>
          </div>
        </section>
      ) : null}
      <div className="grid2">
        <CreateKey
          tenants={tenants.data?.data.map((t) => t.name) ?? []}
          tiers={tiers}
          onCreated={(name, value) => {
            setSecret({ what: `Secret of the new key “${name}”`, value })
            void refresh()
          }}
        />
        <div>
          <CreateTenant tiers={tiers} />
          <ImportKey
            tenants={tenants.data?.data.map((t) => t.name) ?? []}
            tiers={tiers}
            onImported={refresh}
          />
        </div>
      </div>
      <Tenants keys={keys.data?.data ?? []} tiers={tiers} />
      <Section
        title="Keys"
        actions={
          <div className="toolbar">
            <label className="inline">
              Search{' '}
              <input
                type="search"
                value={search}
                onChange={(e) => setSearch(e.target.value)}
                placeholder="name, tenant, tier…"
              />
            </label>
            <label className="check inline">
              <input
                type="checkbox"
                checked={showRevoked}
                onChange={(e) => setShowRevoked(e.target.checked)}
              />{' '}
              Show revoked
            </label>
          </div>
        }
      >
        <ErrorNote error={keys.error} what="Keys" />
        <ErrorNote error={action.error} what="That change failed" />
        {keys.isPending ? <Loading /> : null}
        <div className="table-wrap">
          <table className="stack">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Tenant</th>
                <th scope="col">Role · tier</th>
                <th scope="col">State</th>
                <th scope="col">Expires</th>
                <th scope="col">Last used</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {shown.map((k) => (
                <KeyRow
                  key={k.id}
                  k={k}
                  tiers={tiers}
                  editing={editing === k.id}
                  onEdit={() => setEditing(editing === k.id ? null : k.id)}
                  onDone={() => {
                    setEditing(null)
                    void refresh()
                  }}
                  onAction={(what) => {
                    if (
                      what === 'revoke' &&
                      !window.confirm(`Revoke “${k.name || k.prefix}”? It stops working at once.`)
                    )
                      return
                    action.mutate({ key: k, what })
                  }}
                />
              ))}
            </tbody>
          </table>
        </div>
        {keys.data && shown.length === 0 ? <p className="muted">No keys match.</p> : null}
      </Section>
    </>
  )
}

function KeyRow({
  k,
  tiers,
  editing,
  onEdit,
  onDone,
  onAction,
}: {
  k: Key
  tiers: string[]
  editing: boolean
  onEdit: () => void
  onDone: () => void
  onAction: (what: 'disable' | 'enable' | 'rotate' | 'revoke') => void
}) {
  const label = k.name || k.prefix
  const expired = k.expires_at !== null && Date.parse(k.expires_at) < Date.now()
  return (
    <>
      <tr>
        <th scope="row" className="wrap">
          {label}
          <div className="muted mono small">{k.prefix}…</div>
        </th>
        <td className="wrap" data-label="Tenant">
          {k.tenant_name}
        </td>
        <td data-label="Role · tier">
          {k.role} · {k.tier}
        </td>
        <td data-label="State">
          {k.revoked ? (
            <Badge tone="bad">Revoked</Badge>
          ) : expired ? (
            <Badge tone="warn">Expired</Badge>
          ) : k.enabled ? (
            <Badge tone="ok">Active</Badge>
          ) : (
            <Badge tone="off">Disabled</Badge>
          )}
        </td>
        <td data-label="Expires">{formatTime(k.expires_at)}</td>
        <td data-label="Last used">{formatTime(k.last_used_at)}</td>
        <td data-label="Actions">
          {k.revoked ? null : (
            <div className="actions">
              <button
                type="button"
                className="secondary small"
                onClick={onEdit}
                aria-expanded={editing}
                aria-label={`Edit ${label}`}
              >
                Edit
              </button>
              <button
                type="button"
                className="secondary small"
                onClick={() => onAction(k.enabled ? 'disable' : 'enable')}
                aria-label={`${k.enabled ? 'Disable' : 'Enable'} ${label}`}
              >
                {k.enabled ? 'Disable' : 'Enable'}
              </button>
              <button
                type="button"
                className="secondary small"
                onClick={() => onAction('rotate')}
                aria-label={`Rotate ${label}`}
              >
                Rotate
              </button>
              <button
                type="button"
                className="danger small"
                onClick={() => onAction('revoke')}
                aria-label={`Revoke ${label}`}
              >
                Revoke
              </button>
            </div>
          )}
        </td>
      </tr>
      {editing ? (
        <tr>
          <td colSpan={7}>
            <EditKey k={k} tiers={tiers} onDone={onDone} />
          </td>
        </tr>
      ) : null}
    </>
  )
}

function LimitInputs({ prefix, current }: { prefix: string; current?: Limits | null }) {
  return (
    <fieldset className="limits">
      <legend>Limits (empty: the tier's)</legend>
      {LIMIT_FIELDS.map((f) => (
        <label key={f.name}>
          {f.label}
          <input
            name={f.name}
            id={`${prefix}-${f.name}`}
            type="number"
            min={0}
            step={f.name === 'budget_per_month' ? '0.01' : '1'}
            defaultValue={current?.[f.name] ?? ''}
          />
        </label>
      ))}
    </fieldset>
  )
}

function EditKey({ k, tiers, onDone }: { k: Key; tiers: string[]; onDone: () => void }) {
  const session = useSession()
  const id = useId()
  const save = useMutation({
    mutationFn: (form: FormData) => {
      const expires = String(form.get('expires_at') ?? '')
      return api.patchKey(session, k.id, {
        tier: String(form.get('tier')),
        role: String(form.get('role')) as Role,
        limits: limitsFrom(form) ?? null,
        expires_at: expires ? new Date(`${expires}T23:59:59Z`).toISOString() : null,
      })
    },
    onSuccess: onDone,
  })
  return (
    <form
      className="edit"
      aria-label={`Edit ${k.name || k.prefix}`}
      onSubmit={(e: FormEvent<HTMLFormElement>) => {
        e.preventDefault()
        save.mutate(new FormData(e.currentTarget))
      }}
    >
      <div className="row">
        <label>
          Tier
          <input name="tier" list={`${id}-tiers`} defaultValue={k.tier} required />
          <datalist id={`${id}-tiers`}>
            {tiers.map((t) => (
              <option key={t} value={t} />
            ))}
          </datalist>
        </label>
        <label>
          Role
          <select name="role" defaultValue={k.role}>
            <option value="user">user</option>
            <option value="admin">admin</option>
          </select>
        </label>
        <label>
          Expires on (UTC, empty: never)
          <input
            name="expires_at"
            type="date"
            defaultValue={k.expires_at ? k.expires_at.slice(0, 10) : ''}
          />
        </label>
      </div>
      <LimitInputs prefix={id} current={k.limits} />
      <button type="submit" disabled={save.isPending}>
        Save changes
      </button>
      <ErrorNote error={save.error} what="Not saved" />
    </form>
  )
}

function KeyFieldsInputs({
  id,
  tenants,
  tiers,
}: {
  id: string
  tenants: string[]
  tiers: string[]
}) {
  return (
    <>
      <div className="row">
        <label>
          Name
          <input name="name" required maxLength={200} />
        </label>
        <label>
          Tenant (name or id)
          <input name="tenant_id" list={`${id}-tenants`} required />
          <datalist id={`${id}-tenants`}>
            {tenants.map((t) => (
              <option key={t} value={t} />
            ))}
          </datalist>
        </label>
      </div>
      <div className="row">
        <label>
          Role
          <select name="role" defaultValue="user">
            <option value="user">user</option>
            <option value="admin">admin</option>
          </select>
        </label>
        <label>
          Tier (empty: the tenant's)
          <input name="tier" list={`${id}-tiers`} />
          <datalist id={`${id}-tiers`}>
            {tiers.map((t) => (
              <option key={t} value={t} />
            ))}
          </datalist>
        </label>
        <label>
          Expires in days (empty: never)
          <input name="expires_in_days" type="number" min={1} max={36500} />
        </label>
      </div>
    </>
  )
}

function fieldsFrom(form: FormData): KeyFields {
  const body: KeyFields = {
    tenant_id: String(form.get('tenant_id') ?? '').trim(),
    name: String(form.get('name') ?? '').trim(),
    role: String(form.get('role') ?? 'user') as Role,
  }
  const tier = String(form.get('tier') ?? '').trim()
  if (tier) body.tier = tier
  const days = String(form.get('expires_in_days') ?? '').trim()
  if (days) body.expires_in_days = Number(days)
  const limits = limitsFrom(form)
  if (limits) body.limits = limits
  return body
}

function CreateKey({
  tenants,
  tiers,
  onCreated,
}: {
  tenants: string[]
  tiers: string[]
  onCreated: (name: string, secret: string) => void
}) {
  const session = useSession()
  const id = useId()
  const create = useMutation({
    mutationFn: (form: FormData) => api.createKey(session, fieldsFrom(form)),
  })
  return (
    <Section title="Create a key">
      <form
        aria-label="Create a key"
        onSubmit={(e: FormEvent<HTMLFormElement>) => {
          e.preventDefault()
          const form = e.currentTarget
          create.mutate(new FormData(form), {
            onSuccess: (data) => {
              form.reset()
              onCreated(data.key.name || data.key.prefix, data.api_key)
            },
          })
        }}
      >
        <KeyFieldsInputs id={id} tenants={tenants} tiers={tiers} />
        <details>
          <summary>Limits</summary>
          <LimitInputs prefix={`${id}-new`} />
        </details>
        <button type="submit" disabled={create.isPending}>
          Create key
        </button>
        <ErrorNote error={create.error} what="Not created" />
      </form>
    </Section>
  )
}

function ImportKey({
  tenants,
  tiers,
  onImported,
}: {
  tenants: string[]
  tiers: string[]
  onImported: () => void
}) {
  const session = useSession()
  const id = useId()
  const [done, setDone] = useState<string | null>(null)
  const importing = useMutation({
    mutationFn: (form: FormData) =>
      api.importKey(session, { ...fieldsFrom(form), secret: String(form.get('secret') ?? '') }),
  })
  return (
    <Section title="Import an existing key">
      <details>
        <summary>A secret made elsewhere (seed 000/001's vpn_… keys): stored hashed</summary>
        <form
          aria-label="Import a key"
          onSubmit={(e: FormEvent<HTMLFormElement>) => {
            e.preventDefault()
            const form = e.currentTarget
            importing.mutate(new FormData(form), {
              onSuccess: (data) => {
                form.reset()
                setDone(`Imported “${data.key.name || data.key.prefix}”.`)
                onImported()
              },
            })
          }}
        >
          <label>
            Secret
            <input name="secret" type="password" autoComplete="off" required />
          </label>
          <KeyFieldsInputs id={id} tenants={tenants} tiers={tiers} />
          <button type="submit" disabled={importing.isPending}>
            Import key
          </button>
          {done ? <p role="status">{done}</p> : null}
          <ErrorNote error={importing.error} what="Not imported" />
        </form>
      </details>
    </Section>
  )
}

function CreateTenant({ tiers }: { tiers: string[] }) {
  const session = useSession()
  const client = useQueryClient()
  const id = useId()
  const [done, setDone] = useState<string | null>(null)
  const create = useMutation({
    mutationFn: (form: FormData) => {
      const tier = String(form.get('tier') ?? '').trim()
      return api.createTenant(session, {
        name: String(form.get('name') ?? '').trim(),
        ...(tier ? { tier } : {}),
      })
    },
    onSuccess: (tenant) => {
      setDone(`Tenant “${tenant.name}” created.`)
      void client.invalidateQueries({ queryKey: ['tenants'] })
    },
  })
  return (
    <Section title="Create a tenant">
      <form
        aria-label="Create a tenant"
        className="row"
        onSubmit={(e: FormEvent<HTMLFormElement>) => {
          e.preventDefault()
          const form = e.currentTarget
          create.mutate(new FormData(form), { onSuccess: () => form.reset() })
        }}
      >
        <label>
          Tenant name
          <input name="name" required maxLength={200} />
        </label>
        <label>
          Tier
          <input name="tier" list={`${id}-tiers`} />
          <datalist id={`${id}-tiers`}>
            {tiers.map((t) => (
              <option key={t} value={t} />
            ))}
          </datalist>
        </label>
        <button type="submit" disabled={create.isPending}>
          Create tenant
        </button>
      </form>
      {done ? <p role="status">{done}</p> : null}
      <ErrorNote error={create.error} what="Not created" />
    </Section>
  )
}

function Tenants({ keys, tiers }: { keys: Key[]; tiers: string[] }) {
  const session = useSession()
  const client = useQueryClient()
  const tenants = useQuery({ queryKey: ['tenants'], queryFn: () => api.tenants(session) })
  const id = useId()
  const save = useMutation({
    mutationFn: ({ tenant, tier }: { tenant: string; tier: string }) =>
      api.patchTenant(session, tenant, { tier: tier || null }),
    onSuccess: () => client.invalidateQueries({ queryKey: ['tenants'] }),
  })
  const active = new Map<string, number>()
  for (const k of keys) if (!k.revoked) active.set(k.tenant_id, (active.get(k.tenant_id) ?? 0) + 1)
  return (
    <Section title="Tenants">
      <ErrorNote error={tenants.error} what="Tenants" />
      <ErrorNote error={save.error} what="Tier not changed" />
      <datalist id={`${id}-tiers`}>
        {tiers.map((t) => (
          <option key={t} value={t} />
        ))}
      </datalist>
      <div className="table-wrap">
        <table className="stack">
          <thead>
            <tr>
              <th scope="col">Tenant</th>
              <th scope="col">Tier (its keys' default)</th>
              <th scope="col" className="num">
                Active keys
              </th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {(tenants.data?.data ?? []).map((t) => (
              <tr key={t.id}>
                <th scope="row" className="wrap">
                  {t.name}
                  <div className="muted mono small">{t.id}</div>
                </th>
                <td data-label="Tier">
                  <form
                    className="inline-form"
                    aria-label={`Tier of ${t.name}`}
                    onSubmit={(e: FormEvent<HTMLFormElement>) => {
                      e.preventDefault()
                      const tier = String(new FormData(e.currentTarget).get('tier') ?? '').trim()
                      save.mutate({ tenant: t.id, tier })
                    }}
                  >
                    <input
                      name="tier"
                      aria-label={`Tier of ${t.name}`}
                      list={`${id}-tiers`}
                      defaultValue={t.tier ?? ''}
                      placeholder="default"
                    />
                    <button type="submit" className="secondary small">
                      Save
                    </button>
                  </form>
                </td>
                <td className="num" data-label="Active keys">
                  {active.get(t.id) ?? 0}
                </td>
                <td data-label="Created">{formatTime(t.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </Section>
  )
}

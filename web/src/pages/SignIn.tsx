/** Sign in with a key: checked against the gateway, kept in this browser only if asked. */

import { useEffect, useRef, useState, type FormEvent } from 'react'
import { api, type Role } from '../api/client'
import { ErrorNote } from '../components/common'
import {
  authorizeUrl,
  exchange,
  parseCallback,
  PENDING_ITEM,
  randomString,
  type OidcConfig,
  type Pending,
} from '../lib/oidc'

/** The page's own address, where the identity provider sends the user back. */
function redirectUri(base: string): string {
  return `${base}/ui/`
}

function takePending(): Pending | null {
  const raw = window.sessionStorage.getItem(PENDING_ITEM)
  window.sessionStorage.removeItem(PENDING_ITEM)
  try {
    return raw ? (JSON.parse(raw) as Pending) : null
  } catch {
    return null
  }
}

export function SignIn({
  base,
  storedKey,
  notice,
  onSignedIn,
}: {
  base: string
  storedKey: string | null
  notice: string | null
  onSignedIn: (key: string, role: Role, remember: boolean) => void
}) {
  const [key, setKey] = useState(storedKey ?? '')
  const [remember, setRemember] = useState(true)
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<unknown>(null)
  const tried = useRef(false)
  const [oidc, setOidc] = useState<OidcConfig | null>(null)
  const callback = useRef(parseCallback(window.location.search))

  const check = async (value: string, keep: boolean) => {
    setBusy(true)
    setError(null)
    try {
      const role = await api.role({ base, key: value.trim() })
      onSignedIn(value.trim(), role, keep)
    } catch (e) {
      setError(e)
    } finally {
      setBusy(false)
    }
  }

  useEffect(() => {
    if (tried.current) return
    tried.current = true
    const back = callback.current
    void api
      .uiConfig(base)
      .then(async (config) => {
        setOidc(config.oidc)
        if (!back || !config.oidc) return
        window.history.replaceState(null, '', new URL(redirectUri(base)).pathname)
        if ('error' in back)
          throw new Error(`The identity provider refused the sign-in: ${back.error}`)
        const pending = takePending()
        if (!pending || pending.state !== back.state)
          throw new Error('This sign-in was not started here; start it again.')
        setBusy(true)
        const token = await exchange(config.oidc, redirectUri(base), back.code, pending)
        await check(token, true)
      })
      .catch((e: unknown) => {
        setBusy(false)
        setError(e)
      })
    if (storedKey && !back && !notice) void check(storedKey, true)
  })

  const startOidc = async (config: OidcConfig) => {
    const pending: Pending = { state: randomString(16), verifier: randomString(32) }
    try {
      const url = await authorizeUrl(config, redirectUri(base), pending)
      window.sessionStorage.setItem(PENDING_ITEM, JSON.stringify(pending))
      window.location.assign(url)
    } catch (e) {
      setError(e)
    }
  }

  const submit = (event: FormEvent) => {
    event.preventDefault()
    if (key.trim()) void check(key, remember)
  }

  return (
    <main className="signin" id="main">
      <h1>relaygate</h1>
      <p className="muted">
        Sign in with a relaygate API key. Admin keys see the dashboard; any key can use the
        playground.
      </p>
      {notice ? (
        <p role="alert" className="error">
          {notice}
        </p>
      ) : null}
      <form onSubmit={submit} className="card">
        <label htmlFor="key">API key</label>
        <input
          id="key"
          type="password"
          autoComplete="off"
          spellCheck={false}
          value={key}
          onChange={(e) => setKey(e.target.value)}
          placeholder="rg_…"
          required
        />
        <label className="check">
          <input
            type="checkbox"
            checked={remember}
            onChange={(e) => setRemember(e.target.checked)}
          />
          Keep the key in this browser (local storage)
        </label>
        <button type="submit" disabled={busy || !key.trim()}>
          {busy ? 'Checking…' : 'Sign in'}
        </button>
        <ErrorNote error={error} what="Sign-in failed" />
      </form>
      {oidc ? (
        <div className="card">
          <button
            type="button"
            className="secondary"
            onClick={() => void startOidc(oidc)}
            disabled={busy}
          >
            {oidc.label}
          </button>
        </div>
      ) : null}
      <p className="muted small-print">
        The key is sent only to this gateway. "Forget key" (top right, once signed in) removes it
        and your playground conversations from this browser.
      </p>
    </main>
  )
}

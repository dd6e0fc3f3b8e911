/** Sign in with a key: checked against the gateway, kept in this browser only if asked. */

import { useEffect, useRef, useState, type FormEvent } from 'react'
import { api, type Role } from '../api/client'
import { ErrorNote } from '../components/common'

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
    if (storedKey && !tried.current && !notice) {
      tried.current = true
      void check(storedKey, true)
    }
  })

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
          placeholder="rg-…"
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
      <p className="muted small-print">
        The key is sent only to this gateway. "Forget key" (top right, once signed in) removes it
        and your playground conversations from this browser.
      </p>
    </main>
  )
}

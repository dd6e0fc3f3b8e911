/** The shell: sign-in, navigation and the page the path names. */

import { MutationCache, QueryCache, QueryClient, QueryClientProvider } from '@tanstack/react-query'
import { useMemo, useState, type MouseEvent } from 'react'
import { apiBase, ApiError, type Role } from './api/client'
import { forgetAll, KEY_ITEM, loadKey, saveKey } from './lib/storage'
import { navigate, pathOf, usePage, type Page } from './router'
import { SessionContext, type SignedIn } from './session'
import { SignIn } from './pages/SignIn'
import { Overview } from './pages/Overview'
import { Keys } from './pages/Keys'
import { Models } from './pages/Models'
import { UsageExplorer } from './pages/UsageExplorer'
import { Account } from './pages/Account'
import { Playground } from './pages/Playground'
import { Builder } from './pages/Builder'

const TITLES: Record<Page, string> = {
  overview: 'Overview',
  keys: 'Keys and tenants',
  models: 'Models and nodes',
  usage: 'Usage explorer',
  account: 'My account',
  playground: 'Playground',
  builder: 'App builder',
}
const ADMIN_PAGES: Page[] = [
  'overview',
  'keys',
  'models',
  'usage',
  'account',
  'playground',
  'builder',
]
const USER_PAGES: Page[] = ['account', 'playground', 'builder']

/** A 401 on any call means the key stopped working (revoked, disabled, expired). */
function makeClient(onUnauthorized: (message: string) => void): QueryClient {
  const check = (error: unknown) => {
    if (error instanceof ApiError && error.status === 401) onUnauthorized(error.message)
  }
  return new QueryClient({
    queryCache: new QueryCache({ onError: check }),
    mutationCache: new MutationCache({ onError: check }),
    defaultOptions: {
      queries: {
        retry: (count, error) =>
          !(error instanceof ApiError && error.status >= 400 && error.status < 500) && count < 2,
        refetchOnWindowFocus: false,
        staleTime: 10_000,
      },
    },
  })
}

export function App() {
  const base = apiBase(window.location)
  const [auth, setAuth] = useState<{ key: string; role: Role } | null>(null)
  const [revokedNotice, setRevokedNotice] = useState<string | null>(null)
  const stored = loadKey(window.localStorage)
  const refused = (message: string) => {
    window.localStorage.removeItem(KEY_ITEM)
    setRevokedNotice(
      `The gateway no longer accepts this key: it was revoked or disabled, or it expired ` +
        `(${message.split('. ')[0]}). Sign in with another key.`,
    )
    setAuth(null)
  }
  const client = useMemo(() => makeClient(refused), [])

  const signOut = () => {
    forgetAll(window.localStorage)
    client.clear()
    setAuth(null)
  }

  if (!auth) {
    return (
      <SignIn
        base={base}
        storedKey={stored}
        notice={revokedNotice}
        onSignedIn={(key, role, remember) => {
          if (remember) saveKey(window.localStorage, key)
          setRevokedNotice(null)
          setAuth({ key, role })
        }}
      />
    )
  }
  const session: SignedIn = { base, key: auth.key, role: auth.role, signOut, refused }
  return (
    <QueryClientProvider client={client}>
      <SessionContext.Provider value={session}>
        <Shell role={auth.role} onSignOut={signOut} />
      </SessionContext.Provider>
    </QueryClientProvider>
  )
}

function Shell({ role, onSignOut }: { role: Role; onSignOut: () => void }) {
  const pages = role === 'admin' ? ADMIN_PAGES : USER_PAGES
  const requested = usePage()
  const page: Page = requested && pages.includes(requested) ? requested : pages[0]!
  const [menuOpen, setMenuOpen] = useState(false)
  const go = (event: MouseEvent<HTMLAnchorElement>, target: Page) => {
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return
    event.preventDefault()
    setMenuOpen(false)
    navigate(target)
    document.getElementById('main')?.focus()
  }
  document.title = `${TITLES[page]} · relaygate`
  return (
    <div className="layout">
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <span className="brand">relaygate</span>
        <button
          type="button"
          className="secondary menu-toggle"
          aria-expanded={menuOpen}
          aria-controls="nav"
          onClick={() => setMenuOpen(!menuOpen)}
        >
          Menu
        </button>
        <nav id="nav" aria-label="Pages" className={menuOpen ? 'open' : ''}>
          <ul>
            {pages.map((p) => (
              <li key={p}>
                <a
                  href={pathOf(p)}
                  aria-current={p === page ? 'page' : undefined}
                  onClick={(e) => go(e, p)}
                >
                  {TITLES[p]}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <span className="role muted">{role === 'admin' ? 'Admin key' : 'User key'}</span>
        <button type="button" className="secondary" onClick={onSignOut}>
          Forget key
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        <h1>{TITLES[page]}</h1>
        {page === 'overview' && <Overview />}
        {page === 'keys' && <Keys />}
        {page === 'models' && <Models />}
        {page === 'usage' && <UsageExplorer />}
        {page === 'account' && <Account />}
        {page === 'playground' && <Playground />}
        {page === 'builder' && <Builder />}
      </main>
    </div>
  )
}

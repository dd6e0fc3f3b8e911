/** A small router over the History API: the UI's pages are /ui/<page>. */

import { useEffect, useState } from 'react'

export type Page = 'overview' | 'keys' | 'models' | 'usage' | 'account' | 'playground' | 'builder'
export const PAGES: Page[] = [
  'overview',
  'keys',
  'models',
  'usage',
  'account',
  'playground',
  'builder',
]

/** The page a path names ('' for the UI's root). */
export function pageOf(pathname: string): Page | '' {
  const at = pathname.indexOf('/ui')
  const rest = at >= 0 ? pathname.slice(at + 3) : pathname
  const name = rest.replace(/^\/+/, '').split('/')[0] ?? ''
  return (PAGES as string[]).includes(name) ? (name as Page) : ''
}

export function pathOf(page: Page): string {
  const at = window.location.pathname.indexOf('/ui')
  const root = at >= 0 ? window.location.pathname.slice(0, at) : ''
  return `${root}/ui/${page}`
}

export function navigate(page: Page): void {
  window.history.pushState({}, '', pathOf(page))
  window.dispatchEvent(new PopStateEvent('popstate'))
}

export function usePage(): Page | '' {
  const [page, setPage] = useState(() => pageOf(window.location.pathname))
  useEffect(() => {
    const onPop = () => setPage(pageOf(window.location.pathname))
    window.addEventListener('popstate', onPop)
    return () => window.removeEventListener('popstate', onPop)
  }, [])
  return page
}

/** Sign-in through an OpenID Connect provider (ui.oidc): the authorization code flow with
 * PKCE (S256), as a public client. The token the provider returns is used as the key. */

export interface OidcConfig {
  authorization_endpoint: string
  token_endpoint: string
  client_id: string
  scopes: string
  token: 'id_token' | 'access_token'
  label: string
}

export interface Pending {
  state: string
  verifier: string
}

export const PENDING_ITEM = 'relaygate.oidc'

function base64url(bytes: Uint8Array): string {
  let text = ''
  for (const b of bytes) text += String.fromCharCode(b)
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

export function randomString(bytes = 32): string {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)))
}

export async function challengeOf(verifier: string): Promise<string> {
  if (!globalThis.crypto?.subtle) {
    // Browsers offer SHA-256 (and so PKCE) only to secure pages.
    throw new Error('Single sign-on needs the page served over HTTPS (or from localhost).')
  }
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier))
  return base64url(new Uint8Array(digest))
}

export async function authorizeUrl(
  config: OidcConfig,
  redirectUri: string,
  pending: Pending,
): Promise<string> {
  const url = new URL(config.authorization_endpoint)
  url.searchParams.set('response_type', 'code')
  url.searchParams.set('client_id', config.client_id)
  url.searchParams.set('redirect_uri', redirectUri)
  url.searchParams.set('scope', config.scopes)
  url.searchParams.set('state', pending.state)
  url.searchParams.set('code_challenge', await challengeOf(pending.verifier))
  url.searchParams.set('code_challenge_method', 'S256')
  return url.toString()
}

export type Callback = { code: string; state: string } | { error: string } | null

/** What the provider sent back in the page's address: a code, an error, or nothing. */
export function parseCallback(search: string): Callback {
  const params = new URLSearchParams(search)
  const error = params.get('error')
  if (error) {
    const text = params.get('error_description')
    return { error: text ? `${error}: ${text}` : error }
  }
  const code = params.get('code')
  const state = params.get('state')
  return code && state ? { code, state } : null
}

/** The code exchanged for the token the gateway accepts (ui.oidc.token). */
export async function exchange(
  config: OidcConfig,
  redirectUri: string,
  code: string,
  pending: Pending,
  fetcher: typeof fetch = fetch,
): Promise<string> {
  const body = new URLSearchParams({
    grant_type: 'authorization_code',
    code,
    redirect_uri: redirectUri,
    client_id: config.client_id,
    code_verifier: pending.verifier,
  })
  const response = await fetcher(config.token_endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body,
  })
  const answer = (await response.json().catch(() => ({}))) as Record<string, unknown>
  if (!response.ok) {
    const why = answer.error_description ?? answer.error ?? `${response.status}`
    throw new Error(`The identity provider refused the sign-in: ${String(why)}`)
  }
  const token = answer[config.token]
  if (typeof token !== 'string' || !token)
    throw new Error(`The identity provider sent no ${config.token}.`)
  return token
}

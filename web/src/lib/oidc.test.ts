import { describe, expect, it } from 'vitest'
import {
  authorizeUrl,
  challengeOf,
  exchange,
  parseCallback,
  randomString,
  type OidcConfig,
} from './oidc'

const config: OidcConfig = {
  authorization_endpoint: 'https://idp.example/authorize?tenant=a',
  token_endpoint: 'https://idp.example/token',
  client_id: 'relaygate-ui',
  scopes: 'openid email',
  token: 'id_token',
  label: 'Sign in with SSO',
}

describe('OIDC sign-in', () => {
  it('the PKCE challenge is the S256 of the verifier (RFC 7636 appendix B)', async () => {
    expect(await challengeOf('dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk')).toBe(
      'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM',
    )
    expect(randomString()).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(randomString()).not.toBe(randomString())
  })

  it('the authorization URL keeps the endpoint query and carries the code flow', async () => {
    const url = new URL(
      await authorizeUrl(config, 'http://gw/ui/', { state: 's1', verifier: 'v'.repeat(43) }),
    )
    expect(url.origin + url.pathname).toBe('https://idp.example/authorize')
    expect(Object.fromEntries(url.searchParams)).toEqual({
      tenant: 'a',
      response_type: 'code',
      client_id: 'relaygate-ui',
      redirect_uri: 'http://gw/ui/',
      scope: 'openid email',
      state: 's1',
      code_challenge: await challengeOf('v'.repeat(43)),
      code_challenge_method: 'S256',
    })
  })

  it('the callback is a code, an error or nothing', () => {
    expect(parseCallback('?code=c&state=s')).toEqual({ code: 'c', state: 's' })
    expect(parseCallback('?error=access_denied&error_description=no')).toEqual({
      error: 'access_denied: no',
    })
    expect(parseCallback('?code=c')).toBeNull()
    expect(parseCallback('')).toBeNull()
  })

  it('the code is exchanged with the verifier for the configured token', async () => {
    let sent: URLSearchParams | undefined
    const fetcher = (async (_url: string, init: RequestInit) => {
      sent = init.body as URLSearchParams
      return new Response(JSON.stringify({ id_token: 'jwt', access_token: 'at' }), { status: 200 })
    }) as unknown as typeof fetch
    expect(
      await exchange(config, 'http://gw/ui/', 'c', { state: 's', verifier: 'v' }, fetcher),
    ).toBe('jwt')
    expect(Object.fromEntries(sent!)).toEqual({
      grant_type: 'authorization_code',
      code: 'c',
      redirect_uri: 'http://gw/ui/',
      client_id: 'relaygate-ui',
      code_verifier: 'v',
    })
    const refusing = (async () =>
      new Response(JSON.stringify({ error: 'invalid_grant' }), {
        status: 400,
      })) as unknown as typeof fetch
    await expect(
      exchange(config, 'x', 'c', { state: 's', verifier: 'v' }, refusing),
    ).rejects.toThrow(/invalid_grant/)
    const empty = (async () => new Response('{}', { status: 200 })) as unknown as typeof fetch
    await expect(exchange(config, 'x', 'c', { state: 's', verifier: 'v' }, empty)).rejects.toThrow(
      /no id_token/,
    )
  })
})

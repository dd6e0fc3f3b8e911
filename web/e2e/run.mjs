// End-to-end run of the web UI in real Chromium (Debian's /usr/bin/chromium), driven by
// Playwright's library. Started by tests/e2e/test_ui.py against a real relaygate:
//   node e2e/run.mjs <gateway url> <admin key> <screenshot dir>
// Exits non-zero on the first failed check. Elements are found by role and label.
import { chromium } from 'playwright-core'
import { mkdirSync } from 'node:fs'
import assert from 'node:assert/strict'

const [base, adminKey, shots, mode] = process.argv.slice(2)
mkdirSync(shots, { recursive: true })
const DESKTOP = { width: 1366, height: 900 }
const PHONE = { width: 390, height: 844 }
const MAX_CALLS_PER_PAGE = 6
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
})
const step = (text) => console.log(`- ${text}`)

/** API calls (anything not the page's own files) a page makes while it loads. */
function counter(page) {
  const calls = []
  page.on('request', (r) => {
    const path = new URL(r.url()).pathname
    if (!path.startsWith('/ui')) calls.push(`${r.method()} ${path}`)
  })
  return calls
}

async function shoot(page, name) {
  for (const [label, size] of [
    ['desktop', DESKTOP],
    ['phone', PHONE],
  ]) {
    await page.setViewportSize(size)
    await page.evaluate(() => window.scrollTo(0, 0))
    await page.waitForTimeout(150)
    await page.screenshot({ path: `${shots}/${name}-${label}.png`, fullPage: true })
    if (label === 'phone') {
      const overflow = await page.evaluate(
        () => document.documentElement.scrollWidth - window.innerWidth,
      )
      const culprit = await page.evaluate(() => {
        const wide = [...document.querySelectorAll('body *')].filter(
          (e) => e.getBoundingClientRect().right > window.innerWidth + 1,
        )
        return wide
          .slice(-3)
          .map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)
          .join('; ')
      })
      assert.ok(overflow <= 1, `${name} is wider than a phone by ${overflow}px: ${culprit}`)
    }
  }
  await page.setViewportSize(DESKTOP)
}

/** ui.oidc configured: sign in through the (fake) identity provider, no key typed. */
async function oidcScenario() {
  const context = await browser.newContext({ viewport: DESKTOP })
  const page = await context.newPage()
  page.on('pageerror', (e) => {
    throw e
  })
  const blocked = []
  page.on('console', (m) => m.type() === 'error' && blocked.push(m.text()))
  step('the sign-in page offers the identity provider')
  await page.goto(base + '/ui/')
  const sso = page.getByRole('button', { name: 'Sign in with SSO' })
  await sso.waitFor()
  await shoot(page, 'sign-in-sso')
  step('the provider sends the user back signed in, as the role its token names')
  await sso.click()
  await page.getByRole('heading', { name: 'Overview', level: 1 }).waitFor()
  assert.match(page.url(), /\/ui\/?$/) // the code and state are gone from the address
  const token = await page.evaluate(() => localStorage.getItem('relaygate.key'))
  assert.equal(token.split('.').length, 3, 'the stored credential is the JWT')
  assert.deepEqual(blocked, [])
  step("a token has no key of its own: My account says so, and shows the token's limits")
  await page.getByRole('link', { name: 'My account' }).click()
  await page.getByText(/kept per API key/).waitFor()
  await page.getByText('Tier:').waitFor()
  step('a replayed callback (wrong state) is refused')
  await page.getByRole('button', { name: 'Forget key' }).click()
  await page.goto(base + '/ui/?code=stolen&state=forged')
  await page.getByRole('alert').filter({ hasText: 'not started here' }).waitFor()
  await context.close()
}

try {
  if (mode === 'oidc') {
    await oidcScenario()
    process.exit(0)
  }
  const admin = await browser.newContext({ viewport: DESKTOP })
  const page = await admin.newPage()
  page.on('pageerror', (e) => {
    throw e
  })

  step('a browser at / lands on the sign-in page')
  await page.goto(base + '/')
  assert.match(page.url(), /\/ui\/$/)
  await page.getByRole('heading', { name: 'relaygate' }).waitFor()
  await shoot(page, 'sign-in')

  step('a wrong key is refused, in words')
  await page.getByLabel('API key').fill('rg-not-a-key')
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('alert').filter({ hasText: 'Sign-in failed' }).waitFor()

  step('sign in with the keyboard only')
  await page.getByLabel('API key').fill('')
  await page.getByLabel('API key').focus()
  await page.keyboard.type(adminKey)
  await page.keyboard.press('Tab')
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('type')), 'checkbox')
  await page.keyboard.press('Tab')
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Sign in')
  await page.keyboard.press('Enter')
  await page.getByRole('heading', { name: 'Overview', level: 1 }).waitFor()

  step('keyboard: skip link first, then every page in the navigation, in order')
  await page.keyboard.press('Tab')
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Skip to content')
  const seen = []
  for (let i = 0; i < 12 && seen.length < 6; i++) {
    await page.keyboard.press('Tab')
    const text = await page.evaluate(() =>
      document.activeElement?.closest('nav') ? document.activeElement.textContent : null,
    )
    if (text) seen.push(text)
  }
  assert.deepEqual(seen, [
    'Overview',
    'Keys and tenants',
    'Models and nodes',
    'Usage explorer',
    'My account',
    'Playground',
  ])
  await page.keyboard.press('Shift+Tab') // back to "My account"... then open Keys by keyboard
  await page.getByRole('link', { name: 'Keys and tenants' }).focus()
  await page.keyboard.press('Enter')
  await page.getByRole('heading', { name: 'Keys and tenants', level: 1 }).waitFor()

  step('create a tenant and a key; the secret is shown once, with a copy button')
  const tenantForm = page.getByRole('form', { name: 'Create a tenant' })
  await tenantForm.getByLabel('Tenant name').fill('e2e-team')
  await tenantForm.getByRole('button', { name: 'Create tenant' }).click()
  await page.getByText('Tenant “e2e-team” created.').waitFor()
  const create = page.getByRole('form', { name: 'Create a key' })
  await create.getByLabel('Name', { exact: true }).fill('e2e-user')
  await create.getByLabel('Tenant (name or id)').fill('e2e-team')
  await create.getByRole('button', { name: 'Create key' }).click()
  const secretBox = page.getByRole('region', { name: 'New secret' })
  await secretBox.waitFor()
  const userKey = (await secretBox.locator('code').textContent()).trim()
  assert.ok(userKey.length > 20)
  await secretBox.getByRole('button', { name: 'Copy secret' }).waitFor()
  await page
    .getByRole('row', { name: /e2e-user/ })
    .getByText('Active')
    .waitFor()
  await shoot(page, 'keys')
  await secretBox.getByRole('button', { name: 'Done' }).click()

  step("a tenant's tier, a key's tier, limits and expiry are changed in place")
  const tierForm = page.getByRole('form', { name: 'Tier of e2e-team' })
  await tierForm.getByLabel('Tier of e2e-team').fill('pro')
  const tenantSaved = page.waitForResponse(
    (r) => r.request().method() === 'PATCH' && r.url().includes('/admin/tenants/'),
  )
  await tierForm.getByRole('button', { name: 'Save' }).click()
  assert.equal((await tenantSaved).status(), 200)
  await page.getByRole('button', { name: 'Edit e2e-user' }).click()
  const edit = page.getByRole('form', { name: 'Edit e2e-user' })
  await edit.getByLabel('Tier').fill('pro')
  await edit.getByLabel('Requests per hour').fill('50')
  await edit.getByLabel(/Expires on/).fill('2099-12-31')
  await edit.getByRole('button', { name: 'Save changes' }).click()
  const userRow = page.getByRole('row', { name: /e2e-user/ })
  await userRow.getByText('user · pro').waitFor()
  await userRow.getByText(/2099/).waitFor()

  step('another key: rotated (a new secret, shown once), disabled, enabled')
  await create.getByLabel('Name', { exact: true }).fill('e2e-spare')
  await create.getByLabel('Tenant (name or id)').fill('e2e-team')
  await create.getByRole('button', { name: 'Create key' }).click()
  await page
    .getByRole('region', { name: 'New secret' })
    .getByRole('heading', { name: /e2e-spare/ })
    .waitFor()
  const first = await page.getByRole('region', { name: 'New secret' }).locator('code').textContent()
  await page.getByRole('button', { name: 'Rotate e2e-spare' }).click()
  await page
    .getByRole('region', { name: 'New secret' })
    .getByRole('heading', { name: /New secret of “e2e-spare”/ })
    .waitFor()
  const second = await page
    .getByRole('region', { name: 'New secret' })
    .locator('code')
    .textContent()
  assert.notEqual(first, second)
  await page.getByRole('button', { name: 'Disable e2e-spare' }).click()
  await page
    .getByRole('row', { name: /e2e-spare/ })
    .getByText('Disabled')
    .waitFor()
  await page.getByRole('button', { name: 'Enable e2e-spare' }).click()
  await page
    .getByRole('row', { name: /e2e-spare/ })
    .getByText('Active')
    .waitFor()
  await page
    .getByRole('region', { name: 'New secret' })
    .getByRole('button', { name: 'Done' })
    .click()

  step('an existing secret is imported, stored hashed, never shown back')
  const importing = page.getByRole('form', { name: 'Import a key' })
  await page.getByText(/A secret made elsewhere/).click()
  await importing.getByLabel('Secret').fill('vpn_2hrUOubvcBqlrysKkGOe4CBv5_sTi7QEgNLhp7S2WrI')
  await importing.getByLabel('Name', { exact: true }).fill('e2e-imported')
  await importing.getByLabel('Tenant (name or id)').fill('e2e-team')
  await importing.getByRole('button', { name: 'Import key' }).click()
  await importing.getByText('Imported “e2e-imported”.').waitFor()
  await page
    .getByRole('row', { name: /e2e-imported/ })
    .getByText('Active')
    .waitFor()
  assert.equal(await page.getByText('vpn_2hrUOubvcBqlrysKkGOe4CBv5_sTi7QEgNLhp7S2WrI').count(), 0)

  step('search narrows the list')
  await page.getByLabel('Search').fill('e2e-user')
  assert.equal(await page.getByRole('row', { name: /e2e-user/ }).count(), 1)
  await page.getByLabel('Search').fill('')

  step('the user signs in elsewhere and chats, streamed, with figures under the reply')
  const userContext = await browser.newContext({ viewport: DESKTOP })
  const user = await userContext.newPage()
  user.on('pageerror', (e) => {
    throw e
  })
  await user.goto(base + '/ui/')
  await user.getByLabel('API key').fill(userKey)
  await user.getByRole('button', { name: 'Sign in' }).click()
  await user.getByRole('heading', { name: 'My account', level: 1 }).waitFor()
  assert.equal(await user.getByRole('link', { name: 'Keys and tenants' }).count(), 0) // no admin pages
  await user.getByRole('link', { name: 'Playground' }).click()
  await user.getByRole('heading', { name: 'Playground', level: 1 }).waitFor()
  await user.getByLabel('Model').selectOption('mock')
  const box = user.getByLabel('Message', { exact: true })
  await box.fill('Hello gateway, tell me about streaming')
  await box.press('Shift+Enter') // a new line, not a send
  await box.pressSequentially('second line')
  assert.match(await box.inputValue(), /streaming\nsecond line$/)
  const streamed = user.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'))
  await box.press('Enter')
  const response = await streamed
  assert.match(response.headers()['content-type'], /text\/event-stream/)
  const figures = user.getByLabel('Reply figures').last()
  await figures.getByText(/tokens/).waitFor()
  await figures.getByText(/cost \$0/).waitFor({ timeout: 20000 }) // polled for ~15 s
  assert.match(await figures.textContent(), /\d+ in · \d+ out tokens · first token .* · total/)
  assert.ok((await user.locator('.message.assistant .markdown').last().textContent()).length > 0)

  step('markdown is rendered, but HTML in an answer is shown as text, never run')
  // The development model echoes the prompt, so the prompt is the answer's content.
  await box.fill('**bold** and `code` <img src="x" id="injected" onerror="document.title=1">')
  await box.press('Enter')
  await user
    .getByLabel('Reply figures')
    .nth(1)
    .getByText(/tokens/)
    .waitFor()
  const reply = user.locator('.message.assistant .markdown').last()
  assert.equal(await reply.locator('strong').first().textContent(), 'bold')
  assert.equal(await reply.locator('code').first().textContent(), 'code')
  assert.equal(await user.locator('#injected').count(), 0)
  assert.match(await reply.textContent(), /<img src="x"/)

  step('the stop button ends a slow reply at once')
  await user.getByLabel('Model').selectOption('mock-slow')
  await box.fill('a slow answer please, with many many words in it')
  await box.press('Enter')
  await user.getByRole('button', { name: 'Stop' }).click()
  await user.getByLabel('Reply figures').last().getByText('Stopped').waitFor()
  // each reply keeps its own figures, even those that arrive after the next was sent
  await user
    .getByLabel('Reply figures')
    .nth(1)
    .getByText(/cost \$0/)
    .waitFor({ timeout: 20000 })
  await user
    .getByLabel('Reply figures')
    .last()
    .getByText(/cost \$0/)
    .waitFor({ timeout: 20000 })
  assert.equal(await user.getByLabel('Reply figures').filter({ hasText: 'Stopped' }).count(), 1)
  await user.getByRole('button', { name: 'Send' }).waitFor()

  step('the request is offered as curl and Python, without the key')
  await user.getByRole('button', { name: 'curl' }).click()
  const curl = await user
    .getByRole('region', { name: 'The request as curl' })
    .locator('pre')
    .textContent()
  assert.match(curl, /v1\/chat\/completions/)
  assert.ok(!curl.includes(userKey))
  await user.getByRole('button', { name: 'Python' }).click()
  await user
    .getByRole('region', { name: 'The request as python' })
    .getByRole('button', { name: 'Copy snippet' })
    .waitFor()
  await shoot(user, 'playground')

  step('conversations survive a reload (local storage)')
  await user.reload()
  await user
    .getByRole('heading', { name: 'My account', level: 1 })
    .or(user.getByRole('heading', { name: 'Playground', level: 1 }))
    .waitFor()
  await user.getByRole('link', { name: 'Playground' }).click()
  await user.getByText('Hello gateway, tell me about streaming').first().waitFor()
  await user.getByRole('link', { name: 'My account' }).click()
  await user.getByText('Tier:').waitFor()
  await user.getByText('Requests this hour', { exact: true }).waitFor()
  // The tenant's own limits read in words too, marked as the tenant's.
  await user
    .getByText(/^Requests this (hour|month) \(tenant\)$/)
    .first()
    .waitFor()
  assert.equal(await user.getByText(/ for tenant/).count(), 0)
  await user.getByText(/left of 50$/).waitFor() // the limit the admin set
  assert.match(await user.getByText('Tier:').textContent(), /pro/)

  step("the user's own provider key: added, listed masked (never the secret), deleted")
  const providerSecret = 'sk-e2e-' + 'q7Rb2Lm9Xw4Tz8Vn5Kp1'.repeat(2) + 'xyz123'
  await user.getByText('No provider keys stored.').waitFor()
  await user.getByText('Add a provider key').click()
  const addForm = user.getByRole('form', { name: 'Add a provider key' })
  await addForm.getByLabel('Name').fill('e2e-openai')
  await addForm.getByLabel(/^Secret/).fill(providerSecret)
  await addForm.getByRole('button', { name: 'Add key' }).click()
  await user.getByText('sk-...xyz123').waitFor()
  assert.ok(!(await user.content()).includes(providerSecret), 'the secret is on the page')
  await shoot(user, 'account')
  await user.getByRole('button', { name: 'Delete provider key e2e-openai' }).click()
  await user.getByText('No provider keys stored.').waitFor()

  step('usage appears on the admin dashboard')
  await page.getByRole('link', { name: 'Overview' }).click()
  for (let i = 0; ; i++) {
    await page.reload()
    await page.getByRole('heading', { name: 'Overview', level: 1 }).waitFor()
    const top = page.getByRole('region', { name: 'Top keys' })
    if (await top.getByText('e2e-user').count()) break
    assert.ok(i < 60, 'the chat never reached the dashboard') // 30 s: a busy CI machine
    await page.waitForTimeout(500)
  }
  await page.getByRole('region', { name: 'Top models' }).getByText('mock').first().waitFor()
  await page
    .getByRole('figure', { name: 'Latency percentiles (answered requests)' })
    .locator('canvas')
    .first()
    .waitFor()
  await shoot(page, 'overview')

  step('every page loads with a bounded number of API calls')
  const loads = {}
  for (const name of ['overview', 'keys', 'models', 'usage', 'account', 'playground']) {
    const fresh = await admin.newPage()
    const calls = counter(fresh)
    await fresh.goto(`${base}/ui/${name}`)
    await fresh.getByRole('heading', { level: 1 }).filter({ hasNotText: 'relaygate' }).waitFor()
    await fresh.waitForLoadState('networkidle')
    await fresh.waitForTimeout(300)
    loads[name] = calls.length
    assert.ok(
      calls.length <= MAX_CALLS_PER_PAGE,
      `${name}: ${calls.length} calls: ${calls.join(', ')}`,
    )
    assert.ok(calls.length >= 2, `${name} made no call beyond sign-in: ${calls.join(', ')}`)
    if (name === 'models' || name === 'usage') await shoot(fresh, name)
    await fresh.close()
  }
  console.log(`  API calls per page load (sign-in check included): ${JSON.stringify(loads)}`)

  step('usage explorer: filter by key and export CSV')
  await page.getByRole('link', { name: 'Usage explorer' }).click()
  const filters = page.getByRole('form', { name: 'Usage filters' })
  await filters.getByLabel(/^Key/).selectOption({ label: 'e2e-user (e2e-team)' })
  await filters.getByLabel('Group by').selectOption('model')
  await filters.getByRole('button', { name: 'Apply filters' }).click()
  await page
    .getByRole('region', { name: 'By model' })
    .getByRole('row', { name: /mock/ })
    .first()
    .waitFor()
  const download = page.waitForEvent('download')
  await filters.getByRole('button', { name: 'Export CSV' }).click()
  const csv = await (await download).path()
  const { readFileSync } = await import('node:fs')
  const lines = readFileSync(csv, 'utf8').trim().split('\n')
  assert.match(lines[0], /^request_id,/)
  assert.ok(lines.length >= 3, 'the CSV has the chats')

  step('models page shows the deployments and says nodes are not configured')
  await page.getByRole('link', { name: 'Models and nodes' }).click()
  await page
    .getByRole('region', { name: 'Models and deployments' })
    .getByRole('rowheader', { name: 'mock-slow' })
    .waitFor()
  await page
    .getByText(/No node pools are configured|No nodes: no pool is configured/)
    .or(page.getByRole('region', { name: 'Nodes' }).locator('table'))
    .first()
    .waitFor()

  step('the admin revokes the key; the user page says so')
  await page.getByRole('link', { name: 'Keys and tenants' }).click()
  page.once('dialog', (d) => d.accept())
  await page.getByRole('button', { name: 'Revoke e2e-user' }).click()
  await page.getByLabel('Search').fill('e2e-user')
  await page.getByLabel('Show revoked').check()
  await page
    .getByRole('row', { name: /e2e-user/ })
    .getByText('Revoked')
    .waitFor()
  // The user page may notice the revocation first (its own refresh gets a 401) and go back
  // to sign-in, taking the navigation away: then there is nothing to click.
  await user
    .getByRole('link', { name: 'Playground' })
    .click({ timeout: 2000 })
    .catch(() => {})
  // The model list may be asked for again (401 at once), else the next message is refused.
  const message = user.getByLabel('Message', { exact: true })
  await message
    .fill('are you still there?', { timeout: 2000 })
    .then(() => message.press('Enter', { timeout: 2000 }))
    .catch(() => {}) // the page may already have gone back to sign-in
  await user.getByRole('alert').filter({ hasText: 'no longer accepts this key' }).waitFor()
  assert.equal(await user.evaluate(() => localStorage.getItem('relaygate.key')), null)
  await shoot(user, 'revoked')

  step('phone width: the menu button opens the navigation')
  await page.setViewportSize(PHONE)
  await page.getByRole('button', { name: 'Menu' }).click()
  await page.getByRole('link', { name: 'Overview' }).click()
  await page.getByRole('heading', { name: 'Overview', level: 1 }).waitFor()
  await page.setViewportSize(DESKTOP)

  step('forget key: one click, and the key is gone from this browser')
  await page.getByRole('button', { name: 'Forget key' }).click()
  await page.getByRole('button', { name: 'Sign in' }).waitFor()
  assert.equal(await page.evaluate(() => localStorage.getItem('relaygate.key')), null)
  console.log(`screenshots: ${shots}`)
} finally {
  await browser.close()
}

// End-to-end run of the app builder in real Chromium (Debian's /usr/bin/chromium), against
// a real relaygate whose development model (`mock`) answers the builder with a two-file app.
// Started by tests/e2e/test_builder.py:
//   node e2e/builder.mjs <gateway url> <user key> <screenshot dir>
// Describe an app, see its files, change one by a follow-up, run the preview and read what it
// renders inside the frame, export the ZIP and read it back, undo, keep several projects.
import { chromium } from 'playwright-core'
import { mkdirSync, readFileSync } from 'node:fs'
import assert from 'node:assert/strict'
import { strFromU8, unzipSync } from 'fflate'

const [base, key, shots] = process.argv.slice(2)
mkdirSync(shots, { recursive: true })
const DESKTOP = { width: 1366, height: 900 }
const PHONE = { width: 390, height: 844 }
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // the preview frame in the page's process: a full-page screenshot of headless Chromium
  // leaves an out-of-process frame blank (its sandbox and opaque origin are unchanged)
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-sync',
    '--disable-site-isolation-trials',
    '--disable-features=IsolateOrigins,site-per-process',
  ],
})
const step = (text) => console.log(`- ${text}`)

async function shoot(page, name) {
  for (const [label, size] of [
    ['desktop', DESKTOP],
    ['phone', PHONE],
  ]) {
    await page.setViewportSize(size)
    await page.evaluate(() => window.scrollTo(0, 0))
    // a viewport as tall as the page, not fullPage: headless Chromium leaves a frame that
    // lies below the viewport blank in a full-page capture
    const height = await page.evaluate(() => document.documentElement.scrollHeight)
    await page.setViewportSize({ width: size.width, height })
    await page.waitForTimeout(300)
    await page.screenshot({ path: `${shots}/${name}-${label}.png` })
    await page.setViewportSize(size)
    if (label === 'phone') {
      const overflow = await page.evaluate(
        () => document.documentElement.scrollWidth - window.innerWidth,
      )
      assert.ok(overflow <= 1, `${name} is wider than a phone by ${overflow}px`)
    }
  }
  await page.setViewportSize(DESKTOP)
}

/** Polls until fn() returns a truthy value (or fails after ~10 s, saying what it saw). */
async function until(what, fn) {
  let last
  for (let i = 0; i < 100; i++) {
    last = await fn().catch((e) => `(${e.message.split('\n')[0]})`)
    if (last && !(typeof last === 'string' && last.startsWith('('))) return last
    await new Promise((r) => setTimeout(r, 100))
  }
  assert.fail(`${what}: never happened (last seen: ${JSON.stringify(last)})`)
}

let page
try {
  const context = await browser.newContext({ viewport: DESKTOP, acceptDownloads: true })
  page = await context.newPage()
  page.on('pageerror', (e) => {
    // the app's own errors inside the preview frame are expected (and shown beside it)
    if (!String(e.stack).includes('/ui/preview.html')) throw e
  })
  const cspViolations = []
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text()))
      cspViolations.push(m.text())
  })

  step('sign in with a user key and open the builder; its model list is held back a while')
  let release
  const held = new Promise((resolve) => (release = resolve))
  await page.route('**/v1/models', async (route) => {
    await held
    await route.continue()
  })
  await page.goto(base + '/ui/')
  await page.getByLabel('API key').fill(key)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('link', { name: 'App builder' }).click()
  await page.getByRole('heading', { name: 'App builder', level: 1 }).waitFor()

  step('a send before the models have loaded keeps its draft, and the page says why')
  const ask = page.getByLabel('Describe the app or a change')
  await ask.fill('a counter app')
  await ask.press('Enter')
  await page.getByRole('status').getByText('Loading the models this key may use').waitFor()
  assert.equal(await ask.inputValue(), 'a counter app')
  await shoot(page, 'builder-models-loading')
  release() // the route lets every later request through at once
  await page.getByRole('combobox', { name: /^Model/ }).selectOption('mock')

  step('describe an app: its two files appear, listed as added')
  await ask.press('Enter')
  const files = page.getByRole('region', { name: 'Files' })
  await files.getByRole('button', { name: 'app.js', exact: true }).waitFor()
  await files.getByRole('button', { name: 'index.html', exact: true }).waitFor()
  const changes = page.getByRole('region', { name: 'Last change' })
  assert.equal(await changes.locator('li[data-kind="added"]').count(), 2)
  await files.getByRole('button', { name: 'app.js', exact: true }).click()
  const editor = page.getByLabel('Contents of app.js')
  assert.match(await editor.inputValue(), /const request = "a counter app";/)
  // the editor highlights what it shows
  assert.ok((await page.locator('.code-editor pre .hljs-keyword').count()) > 0)

  step('the preview runs the app in the sandboxed frame')
  const frameEl = page.locator('iframe[title="App preview"]')
  await frameEl.waitFor()
  assert.equal(await frameEl.getAttribute('sandbox'), 'allow-scripts')
  const frame = page.frameLocator('iframe[title="App preview"]')
  await until('the preview shows the request', async () =>
    (await frame.locator('#request').textContent({ timeout: 500 })) ===
    'You asked for: a counter app'
      ? true
      : null,
  )
  step("the frame cannot read the page's storage (the key)")
  const handle = await frameEl.elementHandle()
  const inner = await handle.contentFrame()
  const reach = await inner.evaluate(() => {
    try {
      return window.parent.localStorage.getItem('relaygate.key') ?? 'nothing'
    } catch {
      return 'blocked'
    }
  })
  assert.equal(reach, 'blocked')
  assert.equal(await inner.evaluate(() => window.origin), 'null')
  await shoot(page, 'builder')

  step('a follow-up changes one file; the other is listed unchanged')
  await ask.fill('add dark mode')
  await ask.press('Enter')
  await until('app.js is listed as modified', async () =>
    (await changes.locator('li[data-kind="modified"]').textContent({ timeout: 500 }))?.includes(
      'app.js',
    ),
  )
  assert.match(await changes.locator('li[data-kind="unchanged"]').textContent(), /index\.html/)
  assert.match(await editor.inputValue(), /const request = "add dark mode";/)
  await until('the preview shows the follow-up', async () =>
    (await frame.locator('#request').textContent({ timeout: 500 })) ===
    'You asked for: add dark mode'
      ? true
      : null,
  )
  await shoot(page, 'builder-follow-up')

  step('export: a ZIP with the files and a README on how to run it')
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Export ZIP' }).click(),
  ])
  assert.equal(download.suggestedFilename(), 'a-counter-app.zip')
  const zip = unzipSync(readFileSync(await download.path()))
  assert.deepEqual(Object.keys(zip).sort(), [
    'a-counter-app/README.md',
    'a-counter-app/app.js',
    'a-counter-app/index.html',
  ])
  assert.match(strFromU8(zip['a-counter-app/app.js']), /"add dark mode"/)
  assert.match(strFromU8(zip['a-counter-app/index.html']), /<script src="app.js"><\/script>/)
  assert.match(strFromU8(zip['a-counter-app/README.md']), /## Run it/)

  step('undo brings the first version of app.js back')
  await changes.getByRole('button', { name: 'Undo' }).click()
  assert.match(await editor.inputValue(), /const request = "a counter app";/)

  step('Ctrl+Space inserts what the code-completion endpoint answers, at the cursor')
  const before = await editor.inputValue()
  await editor.focus()
  await page.keyboard.press('Control+End')
  await page.keyboard.press('Control+Space')
  const completed = await until('the completion is inserted', async () => {
    const value = await editor.inputValue()
    return value !== before ? value : null
  })
  assert.ok(completed.startsWith(before), 'the completion goes after the cursor')
  assert.match(completed.slice(before.length), /mock development model/)

  step('an error in the app shows beside the preview, not as a blank frame')
  await editor.fill("document.getElementById('request').textContent = missing.value\n")
  await page.getByRole('button', { name: 'Run again' }).click()
  const errors = page.getByRole('alert', { name: 'Preview errors' })
  await errors.waitFor()
  assert.match(await errors.textContent(), /missing is not defined/)
  await shoot(page, 'builder-error')

  step('projects stay in the browser, several at once')
  await page.reload()
  await page.getByRole('heading', { name: 'App builder', level: 1 }).waitFor()
  await files.getByRole('button', { name: 'app.js', exact: true }).waitFor()
  await page.getByRole('button', { name: 'New project' }).click()
  await page.getByText('No files yet: describe an app below.').waitFor()
  const projects = page.getByRole('region', { name: 'Projects' })
  await projects.getByRole('button', { name: 'a counter app', exact: true }).click()
  await files.getByRole('button', { name: 'index.html', exact: true }).waitFor()

  step('a React project runs in the preview with the bundled React (JSX, TypeScript, state)')
  await page.getByLabel('Stack of a new project').selectOption('react')
  await page.getByRole('button', { name: 'New project' }).click()
  page.once('dialog', (d) => d.accept('src/App.tsx'))
  await files.getByRole('button', { name: 'New file' }).click()
  await page
    .getByLabel('Contents of src/App.tsx')
    .fill(
      "import { useState } from 'react'\n" +
        'export default function App() {\n' +
        '  const [n, setN] = useState<number>(1)\n' +
        '  return <button id="count" onClick={() => setN(n + 1)}>clicked {n}</button>\n' +
        '}\n',
    )
  await page.getByRole('button', { name: 'Run preview' }).click()
  const count = page.frameLocator('iframe[title="App preview"]').locator('#count')
  await count.waitFor()
  assert.equal(await count.textContent(), 'clicked 1')
  await count.click()
  assert.equal(await count.textContent(), 'clicked 2')
  await shoot(page, 'builder-react')

  step('Stop in the middle of a file keeps what came, marked cut short')
  await page.getByLabel('Stack of a new project').selectOption('static')
  await page.getByRole('button', { name: 'New project' }).click()
  await page.getByRole('combobox', { name: /^Model/ }).selectOption('mock-slow')
  await ask.fill('a slow app')
  await ask.press('Enter')
  await page.locator('.turns .message.assistant', { hasText: 'app.js' }).waitFor()
  await page.getByRole('button', { name: 'Stop' }).click()
  await page.locator('.turns .message.error', { hasText: 'Stopped.' }).waitFor()
  await page
    .locator('.turns .message.error', { hasText: 'app.js: the answer ended inside' })
    .waitFor()
  const slow = files.locator('li', {
    has: page.getByRole('button', { name: 'app.js', exact: true }),
  })
  assert.match(await slow.textContent(), /cut short/)
  assert.doesNotMatch(
    await files.locator('li', { hasText: 'index.html' }).textContent(),
    /cut short/,
  )

  assert.deepEqual(cspViolations, [])
  await context.close()
  console.log('builder e2e: all checks passed')
} catch (error) {
  // what the page showed when a check failed: its alerts, notes and turns, and a screenshot
  if (page) {
    const shown = await page
      .locator('[role="alert"], [role="status"], .turns .message')
      .allTextContents()
      .catch((e) => [`(unreadable: ${e.message.split('\n')[0]})`])
    console.log(`the page showed:\n${shown.map((t) => `  | ${t}`).join('\n')}`)
    await page.screenshot({ path: `${shots}/builder-failure.png` }).catch(() => {})
  }
  throw error
} finally {
  await browser.close()
}

import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { MAX_FILES, cleanPath, formatFiles, parseAnswer } from './parse'

describe('parseAnswer', () => {
  it('reads the primary form and keeps the prose', () => {
    const answer =
      'Here is your app.\n\n```html file=index.html\n<h1>Hi</h1>\n```\n\n```js file=app.js\nconsole.log(1)\n```\n'
    const parsed = parseAnswer(answer)
    expect(parsed.files.map((f) => [f.path, f.content, f.complete])).toEqual([
      ['index.html', '<h1>Hi</h1>\n', true],
      ['app.js', 'console.log(1)\n', true],
    ])
    expect(parsed.prose).toBe('Here is your app.')
    expect(parsed.warnings).toEqual([])
  })

  it('accepts the variants models write', () => {
    const answer = [
      '### src/App.tsx',
      '```tsx',
      'export default 1',
      '```',
      '**style.css**',
      '',
      '```css',
      'a {}',
      '```',
      '```js',
      '// src/util.js',
      'export const x = 1',
      '```',
      '```src/b.ts',
      'b',
      '```',
      '```json:package.json',
      '{}',
      '```',
      'File: `README.md`',
      '~~~markdown',
      '# hi',
      '~~~',
      '```html',
      '<!-- page.html -->',
      '<p>',
      '```',
    ].join('\n')
    const parsed = parseAnswer(answer)
    expect(Object.fromEntries(parsed.files.map((f) => [f.path, f.content]))).toEqual({
      'src/App.tsx': 'export default 1\n',
      'style.css': 'a {}\n',
      'src/util.js': 'export const x = 1\n',
      'src/b.ts': 'b\n',
      'package.json': '{}\n',
      'README.md': '# hi\n',
      'page.html': '<p>\n',
    })
    expect(parsed.prose).toBe('')
  })

  it('keeps the last version of a file named twice', () => {
    const answer = '```js file=a.js\n1\n```\ntext\n```js file=b.js\nb\n```\n```js file=a.js\n2\n```'
    const parsed = parseAnswer(answer)
    expect(parsed.files.map((f) => `${f.path}=${f.content.trim()}`)).toEqual(['b.js=b', 'a.js=2'])
  })

  it('keeps a file the stream cut short, marked incomplete', () => {
    const parsed = parseAnswer('```js file=a.js\nok\n```\n```js file=b.js\nconst x =\n``')
    expect(parsed.files[0]).toMatchObject({ path: 'a.js', complete: true })
    expect(parsed.files[1]).toMatchObject({ path: 'b.js', content: 'const x =\n', complete: false })
    expect(parsed.warnings.join()).toMatch(/b\.js: the answer ended inside this file/)
  })

  it('treats blocks that name no file as prose, and says so', () => {
    const parsed = parseAnswer('Run it with:\n```sh\nnpm start\n```\nDone.')
    expect(parsed.files).toEqual([])
    expect(parsed.prose).toContain('npm start')
    expect(parsed.warnings).toEqual(['1 code block named no file and was kept as text.'])
  })

  it('refuses paths that climb out or are absolute-looking nonsense', () => {
    const parsed = parseAnswer('```js file=../../etc/passwd\nx\n```\n```js file=/abs/ok.js\ny\n```')
    expect(parsed.files.map((f) => f.path)).toEqual(['abs/ok.js'])
    expect(cleanPath('a b.js')).toBeNull()
    expect(cleanPath('./src\\x.ts')).toBe('src/x.ts')
    expect(cleanPath('Dockerfile')).toBe('Dockerfile')
  })

  it('keeps a longer fence around content that has fences of its own', () => {
    const readme = '# x\n\n```sh\nnpm i\n```\n'
    const text = formatFiles([{ path: 'README.md', content: readme }])
    expect(text.startsWith('````md file=README.md\n')).toBe(true)
    expect(parseAnswer(text).files[0]!.content).toBe(readme)
  })

  it(`stops at ${MAX_FILES} files`, () => {
    const many = Array.from(
      { length: MAX_FILES + 3 },
      (_, i) => `\`\`\`js file=f${i}.js\n${i}\n\`\`\``,
    )
    const parsed = parseAnswer(many.join('\n'))
    expect(parsed.files).toHaveLength(MAX_FILES)
    expect(parsed.warnings.filter((w) => w.includes('left out'))).toHaveLength(3)
  })

  it('reads back whatever formatFiles writes (property)', () => {
    const path = fc
      .array(fc.stringMatching(/^[a-z][a-z0-9_-]{0,8}$/), { minLength: 1, maxLength: 3 })
      .chain((parts) =>
        fc.constantFrom('js', 'ts', 'css', 'html', 'md').map((ext) => `${parts.join('/')}.${ext}`),
      )
    const content = fc
      .array(fc.oneof(fc.string(), fc.constantFrom('```', '~~~', '// x.js', '```js file=y.js')), {
        maxLength: 6,
      })
      .map((lines) => lines.join('\n').replace(/\r/g, ''))
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.record({ path, content }), { selector: (f) => f.path, maxLength: 5 }),
        (files) => {
          const parsed = parseAnswer('Intro.\n\n' + formatFiles(files))
          const expected = files.map((f) => ({
            path: f.path,
            content: f.content === '' || f.content.endsWith('\n') ? f.content : f.content + '\n',
          }))
          expect(parsed.files.map((f) => ({ path: f.path, content: f.content }))).toEqual(expected)
          expect(parsed.files.every((f) => f.complete)).toBe(true)
        },
      ),
    )
  })

  it('never throws on arbitrary text, and every path it returns is clean (property)', () => {
    fc.assert(
      fc.property(
        fc.string({
          unit: fc.constantFrom('`', '~', '\n', 'a', '.', '/', ' ', 'file=', '#', '*', 'x.js'),
        }),
        (text) => {
          const parsed = parseAnswer(text)
          for (const f of parsed.files) expect(cleanPath(f.path)).toBe(f.path)
          expect(parsed.files.length).toBeLessThanOrEqual(MAX_FILES)
        },
      ),
    )
  })

  it('parses every prefix of an answer (a stream cut anywhere)', () => {
    const answer =
      'Intro.\n```html file=index.html\n<p id="x"></p>\n```\n```js file=app.js\nlet a = 1\n```\n'
    for (let n = 0; n <= answer.length; n++) {
      const parsed = parseAnswer(answer.slice(0, n))
      for (const f of parsed.files) expect(['index.html', 'app.js']).toContain(f.path)
    }
    expect(parseAnswer(answer).files.every((f) => f.complete)).toBe(true)
  })
})

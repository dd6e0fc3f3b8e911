import { unzipSync, strFromU8 } from 'fflate'
import { describe, expect, it } from 'vitest'
import { planPreview } from './plan'
import { buildPreview } from './preview'
import { newProject } from './project'
import { exportFiles, exportZip } from './zip'

const f = (path: string, content: string) => ({ path, content })

describe('preview document', () => {
  it('inlines a static page’s stylesheet and script, reporter first', () => {
    const { html, errors } = buildPreview([
      f(
        'index.html',
        '<html><head><link rel="stylesheet" href="style.css"></head><body><script src="./app.js"></script></body></html>',
      ),
      f('style.css', 'body { color: red }'),
      f('app.js', 'document.body.append("</script>")'),
    ])
    expect(errors).toEqual([])
    expect(html.indexOf('relaygate-preview-error')).toBeLessThan(html.indexOf('color: red'))
    expect(html).toContain('<style data-file="style.css">')
    expect(html).toContain('<script data-file="app.js">')
    expect(html).toContain('append("<\\/script>")') // cannot end the element early
    expect(html).not.toContain('src="./app.js"')
  })

  it('compiles a React project in the Vite layout into the module loader', () => {
    const { html, errors } = buildPreview(
      [
        f(
          'index.html',
          '<html><head></head><body><div id="root"></div><script type="module" src="/src/main.tsx"></script></body></html>',
        ),
        f(
          'src/main.tsx',
          "import { createRoot } from 'react-dom/client'\nimport App from './App'\nimport './index.css'\ncreateRoot(document.getElementById('root')!).render(<App />)",
        ),
        f('src/App.tsx', 'export default function App(): JSX.Element { return <h1>Hello</h1> }'),
        f('src/index.css', 'h1 { color: blue }'),
        f('package.json', '{"dependencies":{"react":"^19"}}'),
      ],
      { react: 'module.exports = {}' },
    )
    expect(errors).toEqual([])
    expect(html).toContain('__rg_define("src/App.tsx"')
    expect(html).toContain('__rg_define("react"')
    expect(html).toContain('__rg_require("src/main.tsx")')
    expect(html).toContain('react/jsx-runtime') // JSX compiled to the automatic runtime
    expect(html).not.toContain('JSX.Element') // types stripped
  })

  it('reports a syntax error before running anything', () => {
    const { errors } = buildPreview([f('src/App.jsx', 'export default () => <div>')])
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatch(/^src\/App\.jsx: /)
  })

  it('says which projects need a server or a compiler it lacks', () => {
    expect(planPreview([f('package.json', '{"dependencies":{"next":"15"}}')]).kind).toBe('server')
    expect(planPreview([f('server.js', "const e = require('express')")]).note).toMatch(
      /Node server/,
    )
    expect(planPreview([f('src/App.vue', '<template/>')]).kind).toBe('vue')
    expect(planPreview([f('index.html', '')]).kind).toBe('static')
    expect(planPreview([]).kind).toBe('empty')
  })
})

describe('export', () => {
  it('zips the files under the project’s folder with a README, and package.json for React', () => {
    const p = {
      ...newProject('p', 'react', 1, 'Todo App!'),
      files: [f('src/App.tsx', 'x'), f('index.html', '<div id="root"></div>')],
      turns: [{ role: 'user' as const, content: 'a todo app' }],
    }
    const zip = unzipSync(exportZip(p))
    expect(Object.keys(zip).sort()).toEqual([
      'todo-app/README.md',
      'todo-app/index.html',
      'todo-app/package.json',
      'todo-app/src/App.tsx',
      'todo-app/vite.config.js',
    ])
    const pkg = JSON.parse(strFromU8(zip['todo-app/package.json']!))
    expect(pkg.dependencies.react).toBeDefined()
    expect(pkg.scripts.dev).toBe('vite')
    expect(strFromU8(zip['todo-app/README.md']!)).toContain('npm run dev')
    expect(exportZip(p)).toEqual(exportZip(p)) // same project, same bytes
  })

  it('adds no package.json to a static site and keeps the model’s own README', () => {
    const p = {
      ...newProject('p', 'static', 1),
      files: [f('index.html', ''), f('README.md', 'mine')],
    }
    const paths = exportFiles(p).map((x) => x.path)
    expect(paths).toEqual(['index.html', 'README.md', 'RUNNING.md'])
  })
})

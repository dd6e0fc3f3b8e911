/** Export: the project as a ZIP made in the browser (fflate), with a README on how to run
 * it and, where the stack needs one and the model wrote none, a package.json. */

import { strToU8, zipSync, type Zippable } from 'fflate'
import { planPreview } from './plan'
import type { Project, ProjectFile } from './project'

/** A name usable as a folder and a file name. */
export function slug(name: string): string {
  return (
    name
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-+|-+$/g, '')
      .slice(0, 40) || 'app'
  )
}

function readme(project: Project, kind: string): string {
  const run: Record<string, string> = {
    static:
      'Open `index.html` in a browser, or serve the folder (for example\n`python3 -m http.server 8080`, then http://localhost:8080).',
    react:
      'Needs Node.js 20 or later:\n\n```sh\nnpm install\nnpm run dev\n```\n\n`npm run build` writes the production site to `dist/`.',
    vue: 'Needs Node.js 20 or later:\n\n```sh\nnpm install\nnpm run dev\n```\n\n`npm run build` writes the production site to `dist/`.',
    server: 'Needs Node.js 20 or later:\n\n```sh\nnpm install\nnpm run dev   # or: npm start\n```',
    empty: 'This project has no files yet.',
  }
  const requests = project.turns
    .filter((t) => t.role === 'user')
    .map((t) => `- ${t.content.split('\n')[0]}`)
  return (
    `# ${project.name}\n\nMade with relaygate's app builder.\n\n## Run it\n\n${run[kind] ?? run.static}\n\n` +
    `## Files\n\n${project.files.map((f) => `- \`${f.path}\``).join('\n')}\n` +
    (requests.length ? `\n## What was asked\n\n${requests.join('\n')}\n` : '')
  )
}

function packageFor(project: Project, kind: string, files: ProjectFile[]): string | null {
  const ts = files.some((f) => /\.tsx?$/.test(f.path))
  const name = slug(project.name)
  if (kind === 'react') {
    const dev: Record<string, string> = { '@vitejs/plugin-react': '^5.0.0', vite: '^7.0.0' }
    if (ts)
      Object.assign(dev, {
        typescript: '^5.9.0',
        '@types/react': '^19.0.0',
        '@types/react-dom': '^19.0.0',
      })
    return JSON.stringify(
      {
        name,
        private: true,
        version: '0.1.0',
        type: 'module',
        scripts: { dev: 'vite', build: 'vite build', preview: 'vite preview' },
        dependencies: { react: '^19.0.0', 'react-dom': '^19.0.0' },
        devDependencies: dev,
      },
      null,
      2,
    )
  }
  if (kind === 'vue') {
    return JSON.stringify(
      {
        name,
        private: true,
        version: '0.1.0',
        type: 'module',
        scripts: { dev: 'vite', build: 'vite build', preview: 'vite preview' },
        dependencies: { vue: '^3.5.0' },
        devDependencies: { '@vitejs/plugin-vue': '^6.0.0', vite: '^7.0.0' },
      },
      null,
      2,
    )
  }
  return null
}

/** The files the ZIP holds, in order (the project's own, then what export adds). */
export function exportFiles(project: Project): ProjectFile[] {
  const kind = planPreview(project.files).kind
  const out = [...project.files]
  const has = (path: string) => out.some((f) => f.path === path)
  if (!has('package.json')) {
    const pkg = packageFor(project, kind, out)
    if (pkg) out.push({ path: 'package.json', content: pkg + '\n' })
  }
  if (
    (kind === 'react' || kind === 'vue') &&
    !out.some((f) => /^vite\.config\.[jt]s$/.test(f.path))
  ) {
    const plugin =
      kind === 'react' ? ['react', '@vitejs/plugin-react'] : ['vue', '@vitejs/plugin-vue']
    out.push({
      path: 'vite.config.js',
      content: `import { defineConfig } from 'vite'\nimport ${plugin[0]} from '${plugin[1]}'\n\nexport default defineConfig({ plugins: [${plugin[0]}()] })\n`,
    })
  }
  const text = readme(project, kind)
  out.push({ path: has('README.md') ? 'RUNNING.md' : 'README.md', content: text })
  return out
}

/** The ZIP's bytes: every file under one folder named after the project. */
export function exportZip(project: Project): Uint8Array {
  const root = slug(project.name)
  const tree: Zippable = {}
  // a fixed date: the same project gives the same bytes
  const mtime = new Date('2026-01-01T00:00:00Z')
  for (const f of exportFiles(project)) tree[`${root}/${f.path}`] = [strToU8(f.content), { mtime }]
  return zipSync(tree, { level: 6 })
}

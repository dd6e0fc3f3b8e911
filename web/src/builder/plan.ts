/** What kind of project the files make, and whether it can run in the page's preview
 * (apart from preview.ts, which carries the compiler, so the page loads that only when a
 * preview runs). */

import type { ProjectFile } from './project'

export type PreviewKind = 'static' | 'react' | 'vue' | 'server' | 'empty'

export interface PreviewPlan {
  kind: PreviewKind
  /** Why a project cannot run in the page (Vue, Next.js, Express), in words. */
  note?: string
}

function packageJson(
  files: ProjectFile[],
): { dependencies?: Record<string, string>; devDependencies?: Record<string, string> } | null {
  const pkg = files.find((f) => f.path === 'package.json')
  if (!pkg) return null
  try {
    return JSON.parse(pkg.content) as { dependencies?: Record<string, string> }
  } catch {
    return null
  }
}

export function planPreview(files: ProjectFile[]): PreviewPlan {
  if (!files.length) return { kind: 'empty' }
  const pkg = packageJson(files)
  const deps = { ...pkg?.dependencies, ...pkg?.devDependencies }
  const has = (name: string) => name in deps
  if (has('next') || files.some((f) => /^next\.config\./.test(f.path))) {
    return {
      kind: 'server',
      note: 'This is a Next.js project: it needs its server, so it does not run in the page. Export it and run `npm install && npm run dev`.',
    }
  }
  if (
    has('express') ||
    has('fastify') ||
    has('koa') ||
    files.some((f) => /require\(['"](?:express|http)['"]\)/.test(f.content))
  ) {
    return {
      kind: 'server',
      note: 'This project needs a Node server (Express or similar), so it does not run in the page. Export it and run `npm install && npm start`.',
    }
  }
  if (has('vue') || files.some((f) => f.path.endsWith('.vue'))) {
    return {
      kind: 'vue',
      note: 'Vue single-file components need the Vue compiler, which the preview does not carry. Export the project and run `npm install && npm run dev`.',
    }
  }
  if (has('react') || files.some((f) => /\.(?:jsx|tsx)$/.test(f.path))) return { kind: 'react' }
  return { kind: 'static' }
}

/** The builder's fenced-file format (docs/builder.md): a model's answer parsed into files.
 *
 * Primary form: a fenced code block whose info string names the path,
 *     ```tsx file=src/App.tsx
 * Also accepted, since models write them: the path on the line before the fence
 * (`### src/App.tsx`, `**src/App.tsx**`, `` `src/App.tsx` ``, `File: src/App.tsx`), a bare
 * path as the info string (```src/App.tsx), or the path in a comment on the block's first
 * line (`// src/App.tsx`, `<!-- index.html -->`, `/* style.css *\/`, `# main.py`).
 * A path named twice keeps its last version; blocks that name no path are prose; a block
 * whose closing fence never came (a stream cut short) is kept and marked incomplete. */

export const MAX_FILES = 50
const MAX_PATH = 200

export interface ParsedFile {
  path: string
  content: string
  language: string
  /** False when the answer ended inside this file's block. */
  complete: boolean
}

export interface ParsedAnswer {
  files: ParsedFile[]
  /** The answer's text outside the file blocks (what the model said about them). */
  prose: string
  warnings: string[]
}

const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/
const PATH_IN_INFO = /(?:^|\s)(?:file|path|filename|name)\s*[=:]\s*("[^"]+"|'[^']+'|\S+)/i
const LOOKS_LIKE_PATH =
  /^[\w.@-][\w./@+-]*\.[A-Za-z0-9]+$|^(?:[\w.@-]+\/)*(?:Dockerfile|Makefile|LICENSE|\.gitignore|\.env[\w.-]*)$/

/** A clean relative path, or null: no '..', no absolute paths, forward slashes. */
export function cleanPath(raw: string): string | null {
  let path = raw.trim().replace(/^["'`]+|["'`:]+$/g, '')
  path = path.replace(/\\/g, '/').replace(/^\.\//, '').replace(/^\/+/, '')
  if (!path || path.length > MAX_PATH || /\s/.test(path)) return null
  const parts = path.split('/')
  if (parts.some((p) => p === '' || p === '.' || p === '..')) return null
  if (!LOOKS_LIKE_PATH.test(path)) return null
  return path
}

/** The path a line before a fence names: `### path`, `**path**`, `` `path` ``, `File: path`. */
function pathOfHeading(line: string): string | null {
  let text = line.trim()
  if (!text) return null
  text = text
    .replace(/^#{1,6}\s+/, '')
    .replace(/^[-*]\s+/, '')
    .replace(/^\d+\.\s+/, '')
  text = text.replace(/^(?:file(?:name)?|path)\s*:\s*/i, '')
  text = text.replace(/^\*\*(.+?)\*\*:?$/, '$1').replace(/^__(.+?)__:?$/, '$1')
  text = text.replace(/^`(.+?)`:?$/, '$1').replace(/:$/, '')
  text = text.replace(/\s+\((?:new|updated|changed|modified)\)$/i, '')
  return cleanPath(text)
}

/** `// path`, `/* path *\/`, `<!-- path -->`, `# path` as a block's first line. */
function pathOfComment(line: string): string | null {
  const m =
    /^\s*(?:\/\/|#|--)\s*(?:file(?:name)?:\s*)?(\S+)\s*$/i.exec(line) ??
    /^\s*\/\*\s*(?:file(?:name)?:\s*)?(\S+)\s*\*\/\s*$/i.exec(line) ??
    /^\s*<!--\s*(?:file(?:name)?:\s*)?(\S+)\s*-->\s*$/i.exec(line)
  return m ? cleanPath(m[1]!) : null
}

function infoOf(info: string): { language: string; path: string | null } {
  const text = info.trim()
  const named = PATH_IN_INFO.exec(text)
  if (named) {
    const language = text.slice(0, named.index).trim().split(/\s+/)[0] ?? ''
    return { language: /[=:]/.test(language) ? '' : language, path: cleanPath(named[1]!) }
  }
  const words = text.split(/\s+/).filter(Boolean)
  // ```tsx:src/App.tsx or ```src/App.tsx or ```tsx src/App.tsx
  if (words.length === 1 && words[0]!.includes(':')) {
    const [language, rest] = words[0]!.split(/:(.*)/s) as [string, string]
    const path = cleanPath(rest)
    if (path) return { language, path }
  }
  for (const word of words) {
    const path = word.includes('.') || word.includes('/') ? cleanPath(word) : null
    if (path) return { language: words[0] === word ? '' : (words[0] ?? ''), path }
  }
  return { language: words[0] ?? '', path: null }
}

export function languageOf(path: string): string {
  const ext = path.includes('.') ? path.slice(path.lastIndexOf('.') + 1).toLowerCase() : ''
  const map: Record<string, string> = {
    js: 'javascript', mjs: 'javascript', cjs: 'javascript', jsx: 'javascript',
    ts: 'typescript', tsx: 'typescript', html: 'xml', htm: 'xml', vue: 'xml', svg: 'xml',
    css: 'css', json: 'json', md: 'markdown', py: 'python', yml: 'yaml', yaml: 'yaml',
  } // prettier-ignore
  return map[ext] ?? 'plaintext'
}

export function parseAnswer(answer: string): ParsedAnswer {
  const lines = answer.replace(/\r\n?/g, '\n').split('\n')
  const found = new Map<string, ParsedFile>()
  const prose: string[] = []
  const warnings: string[] = []
  let unnamed = 0
  let i = 0
  while (i < lines.length) {
    const open = FENCE.exec(lines[i]!)
    if (!open) {
      prose.push(lines[i]!)
      i++
      continue
    }
    // a stream cut inside the opening line: its path may be half written
    if (i === lines.length - 1 && lines[i] !== '') break
    const fence = open[1]!
    const info = infoOf(open[2]!)
    // the path may be on the line before (one blank line allowed between)
    let before: string | null = null
    for (let back = prose.length - 1; back >= 0 && back >= prose.length - 2; back--) {
      if (prose[back]!.trim() === '') continue
      before = pathOfHeading(prose[back]!)
      if (before) prose.splice(back, 1)
      break
    }
    const body: string[] = []
    let closed = false
    i++
    while (i < lines.length) {
      const line = lines[i]!
      const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(line)
      if (close && close[1]![0] === fence[0] && close[1]!.length >= fence.length) {
        closed = true
        i++
        break
      }
      body.push(line)
      i++
    }
    let path = info.path ?? before
    if (!path && body.length) {
      path = pathOfComment(body[0]!)
      if (path) body.shift()
    } else if (path && body.length && pathOfComment(body[0]!) === path) {
      body.shift() // the path named twice: the comment is not the file's
    }
    if (!path) {
      unnamed++
      prose.push(lines[i - body.length - (closed ? 2 : 1)] ?? '', ...body)
      if (closed) prose.push(fence)
      continue
    }
    // a cut-short stream may end in the middle of the closing fence
    if (!closed && body.length && /^ {0,3}[`~]{1,2}$/.test(body[body.length - 1]!)) body.pop()
    const content = body.join('\n') + (body.length ? '\n' : '')
    if (found.has(path))
      found.delete(path) // re-inserted: the last version, in its place
    else if (found.size >= MAX_FILES) {
      warnings.push(`${path}: more than ${MAX_FILES} files; this one was left out.`)
      continue
    }
    found.set(path, {
      path,
      content,
      language: info.language || languageOf(path),
      complete: closed,
    })
    if (!closed) warnings.push(`${path}: the answer ended inside this file; it may be cut short.`)
  }
  if (unnamed) {
    warnings.push(
      `${unnamed} code block${unnamed > 1 ? 's' : ''} named no file and ${unnamed > 1 ? 'were' : 'was'} kept as text.`,
    )
  }
  return {
    files: [...found.values()],
    prose: prose
      .join('\n')
      .replace(/\n{3,}/g, '\n\n')
      .trim(),
    warnings,
  }
}

/** Files written back in the primary form (what follow-ups send the model). */
export function formatFiles(files: { path: string; content: string }[]): string {
  return files
    .map((f) => {
      const longest = Math.max(
        2,
        ...[...f.content.matchAll(/^ {0,3}(`{3,})/gm)].map((m) => m[1]!.length),
      )
      const fence = '`'.repeat(Math.max(3, longest + 1))
      const ext = f.path.includes('.') ? f.path.slice(f.path.lastIndexOf('.') + 1) : ''
      const body = f.content.endsWith('\n') || !f.content ? f.content : f.content + '\n'
      return `${fence}${ext} file=${f.path}\n${body}${fence}`
    })
    .join('\n\n')
}

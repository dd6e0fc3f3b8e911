/** The builder's projects, kept in this browser: files, the conversation that made them,
 * what the last answer changed per file, and undo. Pure functions over plain data (the
 * page stores the whole workspace in local storage). */

import { MAX_FILES, type ParsedAnswer } from './parse'

export type Stack = 'static' | 'react' | 'vue'
export const STACKS: Record<Stack, string> = {
  static: 'Plain HTML, CSS and JavaScript',
  react: 'React (Vite layout)',
  vue: 'Vue (Vite layout)',
}

export interface ProjectFile {
  path: string
  content: string
  /** The answer ended inside this file (a stream cut short). */
  incomplete?: boolean
}

export type ChangeKind = 'added' | 'modified' | 'unchanged' | 'removed'
export interface FileChange {
  path: string
  kind: ChangeKind
  added: number
  removed: number
}

export interface Turn {
  role: 'user' | 'assistant' | 'error'
  content: string
}

export interface Project {
  id: string
  name: string
  stack: Stack
  files: ProjectFile[]
  turns: Turn[]
  /** Earlier versions of the files, newest last (undo). */
  history: ProjectFile[][]
  /** What the latest answer (or undo) changed. */
  changes: FileChange[]
  updatedAt: number
}

export interface Workspace {
  projects: Project[]
  current: string
}

export const MAX_UNDO = 20

export function newProject(id: string, stack: Stack, now: number, name = 'Untitled app'): Project {
  return { id, name, stack, files: [], turns: [], history: [], changes: [], updatedAt: now }
}

export function emptyWorkspace(id: string, now: number): Workspace {
  return { projects: [newProject(id, 'static', now)], current: id }
}

export function isWorkspace(value: unknown): value is Workspace {
  const w = value as Workspace
  return (
    !!w &&
    Array.isArray(w.projects) &&
    w.projects.length > 0 &&
    typeof w.current === 'string' &&
    w.projects.every(
      (p) => typeof p.id === 'string' && Array.isArray(p.files) && Array.isArray(p.history),
    )
  )
}

export function currentProject(w: Workspace): Project {
  return w.projects.find((p) => p.id === w.current) ?? w.projects[0]!
}

export function updateProject(
  w: Workspace,
  id: string,
  change: (p: Project) => Project,
): Workspace {
  return { ...w, projects: w.projects.map((p) => (p.id === id ? change(p) : p)) }
}

export function addProject(w: Workspace, project: Project): Workspace {
  return { projects: [project, ...w.projects], current: project.id }
}

export function removeProject(
  w: Workspace,
  id: string,
  fallbackId: string,
  now: number,
): Workspace {
  const projects = w.projects.filter((p) => p.id !== id)
  if (!projects.length) return emptyWorkspace(fallbackId, now)
  return { projects, current: w.current === id ? projects[0]!.id : w.current }
}

const byPath = (a: ProjectFile, b: ProjectFile) => a.path.localeCompare(b.path)

/** Line counts added and removed between two texts (a longest-common-subsequence diff;
 * very large files are compared by line sets instead, which is close enough for a count). */
export function lineDiff(before: string, after: string): { added: number; removed: number } {
  if (before === after) return { added: 0, removed: 0 }
  const a = before.split('\n')
  const b = after.split('\n')
  if (a.length * b.length > 4_000_000) {
    const setA = new Set(a)
    const setB = new Set(b)
    return {
      added: b.filter((l) => !setA.has(l)).length,
      removed: a.filter((l) => !setB.has(l)).length,
    }
  }
  let prev = new Array<number>(b.length + 1).fill(0)
  for (let i = 1; i <= a.length; i++) {
    const row = new Array<number>(b.length + 1).fill(0)
    for (let j = 1; j <= b.length; j++) {
      row[j] = a[i - 1] === b[j - 1] ? prev[j - 1]! + 1 : Math.max(prev[j]!, row[j - 1]!)
    }
    prev = row
  }
  const common = prev[b.length]!
  return { added: b.length - common, removed: a.length - common }
}

/** Lines in a text (a final newline ends the last line; it does not start another). */
export function lineCount(text: string): number {
  if (!text) return 0
  return text.split('\n').length - (text.endsWith('\n') ? 1 : 0)
}

export function changesBetween(before: ProjectFile[], after: ProjectFile[]): FileChange[] {
  const old = new Map(before.map((f) => [f.path, f.content]))
  const out: FileChange[] = []
  for (const f of after) {
    const was = old.get(f.path)
    if (was === undefined) {
      out.push({ path: f.path, kind: 'added', added: lineCount(f.content), removed: 0 })
    } else {
      const d = lineDiff(was, f.content)
      out.push({ path: f.path, kind: d.added || d.removed ? 'modified' : 'unchanged', ...d })
    }
    old.delete(f.path)
  }
  for (const [path, content] of old) {
    out.push({ path, kind: 'removed', added: 0, removed: lineCount(content) })
  }
  return out.sort((x, y) => x.path.localeCompare(y.path))
}

function pushHistory(p: Project): ProjectFile[][] {
  return [...p.history, p.files].slice(-MAX_UNDO)
}

/** The model's answer applied: the files it names replace or join the project's (files it
 * does not name stay), up to MAX_FILES; returns the project and what was refused. */
export function applyAnswer(
  p: Project,
  parsed: ParsedAnswer,
  now: number,
): { project: Project; refused: string[] } {
  const files = new Map(p.files.map((f) => [f.path, f]))
  const refused: string[] = []
  for (const f of parsed.files) {
    if (!files.has(f.path) && files.size >= MAX_FILES) {
      refused.push(f.path)
      continue
    }
    const file: ProjectFile = { path: f.path, content: f.content }
    if (!f.complete) file.incomplete = true
    files.set(f.path, file)
  }
  const next = [...files.values()].sort(byPath)
  const changes = changesBetween(p.files, next)
  const named = new Set(parsed.files.map((f) => f.path))
  const project: Project = {
    ...p,
    files: next,
    history: parsed.files.length ? pushHistory(p) : p.history,
    // files the answer did not name are not listed as unchanged: it did not touch them
    changes: changes.filter((c) => c.kind !== 'unchanged' || named.has(c.path)),
    updatedAt: now,
  }
  return { project, refused }
}

/** The files as they were before the last answer (or edit step). */
export function undo(p: Project, now: number): Project {
  const previous = p.history[p.history.length - 1]
  if (!previous) return p
  return {
    ...p,
    files: previous,
    history: p.history.slice(0, -1),
    changes: changesBetween(p.files, previous),
    updatedAt: now,
  }
}

/** One file back to how it was before the last answer (removed if the answer added it). */
export function revertFile(p: Project, path: string, now: number): Project {
  const previous = p.history[p.history.length - 1]
  if (!previous) return p
  const old = previous.find((f) => f.path === path)
  const files = p.files.filter((f) => f.path !== path)
  if (old) files.push(old)
  return {
    ...p,
    history: pushHistory(p),
    files: files.sort(byPath),
    changes: p.changes.filter((c) => c.path !== path),
    updatedAt: now,
  }
}

/** A hand edit in the editor (undo keeps answers, not keystrokes). */
export function editFile(p: Project, path: string, content: string, now: number): Project {
  return {
    ...p,
    files: p.files.map((f) => (f.path === path ? { path, content } : f)),
    updatedAt: now,
  }
}

export function addFile(
  p: Project,
  path: string,
  now: number,
): { project: Project; error?: string } {
  if (p.files.some((f) => f.path === path)) return { project: p, error: `${path} exists already.` }
  if (p.files.length >= MAX_FILES) {
    return { project: p, error: `A project holds at most ${MAX_FILES} files.` }
  }
  const files = [...p.files, { path, content: '' }].sort(byPath)
  return { project: { ...p, history: pushHistory(p), files, updatedAt: now } }
}

export function deleteFile(p: Project, path: string, now: number): Project {
  return {
    ...p,
    history: pushHistory(p),
    files: p.files.filter((f) => f.path !== path),
    updatedAt: now,
  }
}

/** A project's name from the first request ("a todo app with dark mode" → that). */
export function nameFrom(request: string): string {
  const line = request.trim().split('\n')[0]!.replace(/\s+/g, ' ')
  return line.length > 40 ? line.slice(0, 39) + '…' : line || 'Untitled app'
}

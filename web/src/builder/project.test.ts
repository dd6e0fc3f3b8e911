import { describe, expect, it } from 'vitest'
import { MAX_FILES, parseAnswer } from './parse'
import {
  addFile,
  addProject,
  applyAnswer,
  changesBetween,
  emptyWorkspace,
  isWorkspace,
  lineCount,
  lineDiff,
  MAX_UNDO,
  newProject,
  removeProject,
  revertFile,
  undo,
} from './project'
import { builderMessages, BUILDER_MARKER } from './prompt'

const answer = (files: Record<string, string>) =>
  Object.entries(files)
    .map(([p, c]) => `\`\`\`x file=${p}\n${c}\n\`\`\``)
    .join('\n')

describe('project state', () => {
  it('applies an answer, then a follow-up, listing what changed per file', () => {
    let p = newProject('p', 'static', 1)
    p = applyAnswer(p, parseAnswer(answer({ 'index.html': '<p>', 'app.js': 'a\nb' })), 2).project
    expect(p.changes.map((c) => [c.path, c.kind])).toEqual([
      ['app.js', 'added'],
      ['index.html', 'added'],
    ])
    p = applyAnswer(p, parseAnswer(answer({ 'index.html': '<p>', 'app.js': 'a\nc\nd' })), 3).project
    expect(p.changes).toEqual([
      { path: 'app.js', kind: 'modified', added: 2, removed: 1 },
      { path: 'index.html', kind: 'unchanged', added: 0, removed: 0 },
    ])
    expect(p.history).toHaveLength(2)
    // a follow-up that names one file leaves the other alone and does not list it
    p = applyAnswer(p, parseAnswer(answer({ 'style.css': 'x' })), 4).project
    expect(p.files.map((f) => f.path)).toEqual(['app.js', 'index.html', 'style.css'])
    expect(p.changes.map((c) => c.path)).toEqual(['style.css'])
  })

  it('undoes answers one at a time, back to nothing', () => {
    let p = newProject('p', 'static', 1)
    p = applyAnswer(p, parseAnswer(answer({ 'a.js': '1' })), 2).project
    p = applyAnswer(p, parseAnswer(answer({ 'a.js': '2', 'b.js': 'b' })), 3).project
    p = undo(p, 4)
    expect(p.files).toEqual([{ path: 'a.js', content: '1\n' }])
    expect(p.changes.map((c) => [c.path, c.kind])).toEqual([
      ['a.js', 'modified'],
      ['b.js', 'removed'],
    ])
    p = undo(p, 5)
    expect(p.files).toEqual([])
    expect(undo(p, 6)).toBe(p)
  })

  it('reverts one file of the last answer, removing it if the answer added it', () => {
    let p = newProject('p', 'static', 1)
    p = applyAnswer(p, parseAnswer(answer({ 'a.js': '1' })), 2).project
    p = applyAnswer(p, parseAnswer(answer({ 'a.js': '2', 'b.js': 'b' })), 3).project
    const a = revertFile(p, 'a.js', 4)
    expect(a.files).toEqual([
      { path: 'a.js', content: '1\n' },
      { path: 'b.js', content: 'b\n' },
    ])
    expect(revertFile(p, 'b.js', 4).files.map((f) => f.path)).toEqual(['a.js'])
    expect(undo(a, 5).files).toEqual(p.files) // the revert is itself undoable
  })

  it(`holds at most ${MAX_FILES} files`, () => {
    const many = Object.fromEntries(
      Array.from({ length: MAX_FILES }, (_, i) => [`f${i}.js`, `${i}`]),
    )
    let p = applyAnswer(newProject('p', 'static', 1), parseAnswer(answer(many)), 2).project
    expect(p.files).toHaveLength(MAX_FILES)
    const more = applyAnswer(p, parseAnswer(answer({ 'new.js': 'x', 'f0.js': 'changed' })), 3)
    expect(more.refused).toEqual(['new.js'])
    expect(more.project.files).toHaveLength(MAX_FILES)
    expect(more.project.files.find((f) => f.path === 'f0.js')!.content).toBe('changed\n')
    p = more.project
    expect(addFile(p, 'x.js', 4).error).toMatch(/at most 50/)
  })

  it('keeps only the last undo steps', () => {
    let p = newProject('p', 'static', 1)
    for (let i = 0; i < MAX_UNDO + 5; i++)
      p = applyAnswer(p, parseAnswer(answer({ 'a.js': `${i}` })), i).project
    expect(p.history).toHaveLength(MAX_UNDO)
  })

  it('marks files an answer cut short', () => {
    const p = applyAnswer(
      newProject('p', 'static', 1),
      parseAnswer('```js file=a.js\nlet'),
      2,
    ).project
    expect(p.files).toEqual([{ path: 'a.js', content: 'let\n', incomplete: true }])
  })

  it('keeps several projects and never none', () => {
    let w = emptyWorkspace('one', 1)
    w = addProject(w, newProject('two', 'react', 2))
    expect(w.current).toBe('two')
    expect(w.projects.map((p) => p.id)).toEqual(['two', 'one'])
    w = removeProject(w, 'two', 'x', 3)
    expect(w.current).toBe('one')
    w = removeProject(w, 'one', 'fresh', 4)
    expect(w.projects.map((p) => p.id)).toEqual(['fresh'])
    expect(isWorkspace(w)).toBe(true)
    expect(isWorkspace({ projects: [] })).toBe(false)
  })

  it('counts changed lines', () => {
    expect(lineDiff('a\nb\nc', 'a\nx\nc\nd')).toEqual({ added: 2, removed: 1 })
    expect([lineCount(''), lineCount('a'), lineCount('a\nb\n'), lineCount('a\n\n')]).toEqual([
      0, 1, 2, 2,
    ])
    expect(changesBetween([{ path: 'a', content: 'x' }], [])).toEqual([
      { path: 'a', kind: 'removed', added: 0, removed: 1 },
    ])
  })
})

describe('builder prompt', () => {
  it('names the format and the stack, and sends the current files on follow-ups', () => {
    let p = newProject('p', 'react', 1)
    const first = builderMessages(p, 'a todo app')
    expect(first[0]!.content).toContain(BUILDER_MARKER)
    expect(first[0]!.content).toContain('React (Vite layout)')
    expect(first[1]).toEqual({ role: 'user', content: 'a todo app' })
    p = applyAnswer(p, parseAnswer(answer({ 'src/App.tsx': 'x' })), 2).project
    p = { ...p, turns: [{ role: 'user', content: 'a todo app' }] }
    const next = builderMessages(p, 'add dark mode')
    expect(next[1]!.content).toContain('```tsx file=src/App.tsx\nx\n```')
    expect(next[1]!.content).toContain('Request: add dark mode')
    expect(next[1]!.content).toContain('- a todo app')
  })
})

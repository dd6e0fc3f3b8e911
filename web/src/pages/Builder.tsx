/** The app builder (issue 17, seed 001's NexusAI): describe an app, get its files from the
 * model in the fenced-file format (docs/builder.md), edit them, ask for changes, undo them,
 * preview the app in a sandboxed frame and export it as a ZIP. Projects are kept in this
 * browser. Generation is a streamed /v1/chat/completions call with the signed-in key. */

import { useQuery } from '@tanstack/react-query'
import { useEffect, useMemo, useRef, useState, type KeyboardEvent } from 'react'
import { api, ApiError, errorFrom, headers } from '../api/client'
import { streamChat } from '../api/chat'
import { ModelsNote } from '../components/common'
import { Editor } from '../builder/Editor'
import { MAX_FILES, cleanPath, parseAnswer } from '../builder/parse'
import { planPreview } from '../builder/plan'
import { builderMessages } from '../builder/prompt'
import {
  STACKS,
  addFile,
  addProject,
  applyAnswer,
  currentProject,
  deleteFile,
  editFile,
  emptyWorkspace,
  isWorkspace,
  nameFrom,
  newProject,
  removeProject,
  revertFile,
  undo,
  updateProject,
  type Project,
  type Stack,
  type Workspace,
} from '../builder/project'
import { loadJson } from '../lib/storage'
import { useSession } from '../session'
import '../builder/builder.css'

export const BUILDER_ITEM = 'relaygate.builder'
/** Room for a whole project in one answer. */
const MAX_OUTPUT = 8192

function newId(): string {
  return Math.random().toString(36).slice(2, 10) + Date.now().toString(36)
}

export function Builder() {
  const session = useSession()
  const models = useQuery({ queryKey: ['models'], queryFn: () => api.models(session) })
  const [workspace, setWorkspace] = useState<Workspace>(() =>
    loadJson(window.localStorage, BUILDER_ITEM, emptyWorkspace(newId(), Date.now()), isWorkspace),
  )
  const [model, setModel] = useState('')
  const [draft, setDraft] = useState('')
  const [busy, setBusy] = useState(false)
  const [live, setLive] = useState('')
  const [notice, setNotice] = useState<string | null>(null)
  const [selected, setSelected] = useState<string | null>(null)
  const [storageError, setStorageError] = useState<string | null>(null)
  const [previewRun, setPreviewRun] = useState(0)
  const abort = useRef<AbortController | null>(null)
  const project = currentProject(workspace)
  const modelIds = models.data?.data.map((m) => m.id) ?? []
  const chosen = model && modelIds.includes(model) ? model : (modelIds[0] ?? '')
  const file = project.files.find((f) => f.path === selected) ?? project.files[0]

  useEffect(() => {
    try {
      window.localStorage.setItem(BUILDER_ITEM, JSON.stringify(workspace))
      setStorageError(null)
    } catch {
      setStorageError('This browser refused to keep the projects (storage full): export them.')
    }
  }, [workspace])
  useEffect(() => () => abort.current?.abort(), [])

  const change = (update: (p: Project) => Project) =>
    setWorkspace((w) => updateProject(w, project.id, update))

  const submit = async () => {
    const text = draft.trim()
    if (!text || busy || !chosen) return
    const id = project.id
    const messages = builderMessages(project, text)
    setDraft('')
    setNotice(null)
    setBusy(true)
    setLive('')
    setWorkspace((w) =>
      updateProject(w, id, (p) => ({
        ...p,
        name: p.turns.length ? p.name : nameFrom(text),
        turns: [...p.turns, { role: 'user', content: text }],
      })),
    )
    const controller = new AbortController()
    abort.current = controller
    let answer = ''
    let shown = 0
    let failure: string | null = null
    try {
      await streamChat(
        session,
        { model: chosen, messages, stream: true, temperature: 0.2, max_tokens: MAX_OUTPUT },
        controller.signal,
        (delta) => {
          if (delta.error) failure = delta.error
          answer += delta.text
          // the live file list is parsed from the answer so far: a few times a second
          const now = performance.now()
          if (now - shown > 150) {
            shown = now
            setLive(answer)
          }
        },
      )
    } catch (error) {
      if (!controller.signal.aborted) {
        failure = error instanceof ApiError ? `${error.message} (${error.status})` : String(error)
      }
    } finally {
      abort.current = null
      setBusy(false)
      setLive('')
    }
    const parsed = parseAnswer(answer)
    setWorkspace((w) =>
      updateProject(w, id, (p) => {
        const { project: next, refused } = applyAnswer(p, parsed, Date.now())
        const turns = [...next.turns]
        const said = parsed.prose || (parsed.files.length ? '' : answer.trim())
        const files = parsed.files.map((f) => f.path)
        if (said || files.length) {
          turns.push({
            role: 'assistant',
            content: [said, files.length ? `Files: ${files.join(', ')}` : '']
              .filter(Boolean)
              .join('\n\n'),
          })
        }
        const problems = [...parsed.warnings]
        if (refused.length)
          problems.push(`Over ${MAX_FILES} files, left out: ${refused.join(', ')}`)
        if (failure) problems.unshift(failure)
        else if (controller.signal.aborted) problems.unshift('Stopped.')
        else if (!files.length) problems.push('The answer named no files; nothing changed.')
        if (problems.length) turns.push({ role: 'error', content: problems.join('\n') })
        return { ...next, turns }
      }),
    )
    if (parsed.files.length) setPreviewRun((n) => n + 1)
  }

  const complete = async (before: string): Promise<string | null> => {
    if (!file) return null
    const ext = file.path.slice(file.path.lastIndexOf('.') + 1)
    const response = await fetch(`${session.base}/ai/code/complete`, {
      method: 'POST',
      headers: headers(session, true),
      body: JSON.stringify({
        code: before.slice(-8000),
        language: ext,
        max_tokens: 128,
        ...(chosen ? { model: chosen } : {}),
      }),
    })
    if (!response.ok) {
      const error = await errorFrom(response)
      setNotice(`Code completion is not available: ${error.message} (${error.status})`)
      return null
    }
    const body = (await response.json()) as { completion?: string }
    return body.completion ?? null
  }

  const onKey = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault()
      void submit()
    }
  }

  const exportProject = async () => {
    const { exportZip, slug } = await import('../builder/zip')
    const bytes = exportZip(project)
    const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: 'application/zip' }))
    const link = document.createElement('a')
    link.href = url
    link.download = `${slug(project.name)}.zip`
    document.body.appendChild(link)
    link.click()
    link.remove()
    window.setTimeout(() => URL.revokeObjectURL(url), 10_000)
  }

  const newFile = () => {
    const raw = window.prompt('Path of the new file (for example src/Button.tsx)')
    if (!raw) return
    const path = cleanPath(raw)
    if (!path) {
      setNotice(`"${raw}" is not a usable path: relative, with an extension, no "..".`)
      return
    }
    const { project: next, error } = addFile(project, path, Date.now())
    if (error) setNotice(error)
    else {
      change(() => next)
      setSelected(path)
    }
  }

  return (
    <div className="builder">
      <aside className="builder-side" aria-label="Projects and files">
        <ProjectPicker
          workspace={workspace}
          busy={busy}
          onNew={(stack) =>
            setWorkspace((w) => addProject(w, newProject(newId(), stack, Date.now())))
          }
          onPick={(id) => setWorkspace((w) => ({ ...w, current: id }))}
          onDelete={(id) => setWorkspace((w) => removeProject(w, id, newId(), Date.now()))}
        />
        <section aria-label="Files" className="card file-tree">
          <h2>
            Files{' '}
            <span className="muted small">
              {project.files.length}/{MAX_FILES}
            </span>
          </h2>
          {project.files.length ? (
            <ul>
              {project.files.map((f) => (
                <li key={f.path} className={f.path === file?.path ? 'current' : ''}>
                  <button
                    type="button"
                    className="link"
                    aria-current={f.path === file?.path ? 'true' : undefined}
                    onClick={() => setSelected(f.path)}
                    style={{ paddingLeft: `${f.path.split('/').length - 1}rem` }}
                  >
                    {f.path}
                  </button>
                  {f.incomplete ? <span className="badge warn">cut short</span> : null}
                </li>
              ))}
            </ul>
          ) : (
            <p className="muted">No files yet: describe an app below.</p>
          )}
          <div className="row">
            <button type="button" className="secondary small" onClick={newFile} disabled={busy}>
              New file
            </button>
            {file ? (
              <button
                type="button"
                className="secondary small"
                disabled={busy}
                onClick={() => change((p) => deleteFile(p, file.path, Date.now()))}
              >
                Delete {file.path.split('/').pop()}
              </button>
            ) : null}
          </div>
        </section>
      </aside>

      <div className="builder-main">
        <section className="card builder-chat" aria-label="Conversation">
          <div className="row">
            <label>
              Stack
              <select
                value={project.stack}
                disabled={busy || project.files.length > 0}
                onChange={(e) => change((p) => ({ ...p, stack: e.target.value as Stack }))}
              >
                {Object.entries(STACKS).map(([value, label]) => (
                  <option key={value} value={value}>
                    {label}
                  </option>
                ))}
              </select>
            </label>
            <label>
              Model
              <select value={chosen} onChange={(e) => setModel(e.target.value)} disabled={busy}>
                {modelIds.map((m) => (
                  <option key={m}>{m}</option>
                ))}
              </select>
            </label>
          </div>
          <ModelsNote models={models} />
          <ol className="turns" aria-label="Requests and answers">
            {project.turns.map((t, i) => (
              <li key={i} className={`message ${t.role}`}>
                <div className="plain">{t.content}</div>
              </li>
            ))}
            {busy ? (
              <li className="message assistant" aria-live="polite">
                <span className="spinner" aria-hidden="true" /> Writing the files…{' '}
                <span className="muted small">
                  {parseAnswer(live)
                    .files.map((f) => f.path)
                    .join(', ')}
                </span>
              </li>
            ) : null}
          </ol>
          <div className="composer">
            <textarea
              aria-label="Describe the app or a change"
              placeholder={
                project.files.length
                  ? 'Ask for a change, for example: add dark mode'
                  : 'Describe an app, for example: a todo list with filters'
              }
              value={draft}
              rows={3}
              disabled={busy}
              onChange={(e) => setDraft(e.target.value)}
              onKeyDown={onKey}
            />
            {busy ? (
              <button type="button" className="secondary" onClick={() => abort.current?.abort()}>
                Stop
              </button>
            ) : (
              <button
                type="button"
                onClick={() => void submit()}
                disabled={!draft.trim() || !chosen}
              >
                {project.files.length ? 'Send change' : 'Build'}
              </button>
            )}
          </div>
          {notice ? (
            <p role="alert" className="error">
              {notice}
            </p>
          ) : null}
          {storageError ? (
            <p role="alert" className="error">
              {storageError}
            </p>
          ) : null}
        </section>

        <Changes project={project} busy={busy} onChange={change} onSelect={setSelected} />

        <div className="builder-work">
          {file ? (
            <section className="card" aria-label="Editor">
              <h2 className="editor-title">
                {file.path}
                {file.incomplete ? (
                  <span className="badge warn">the answer was cut short in this file</span>
                ) : null}
              </h2>
              <Editor
                path={file.path}
                value={file.content}
                readOnly={busy}
                onChange={(next) => change((p) => editFile(p, file.path, next, Date.now()))}
                onComplete={complete}
              />
              <p className="muted small">
                Tab indents (Escape, then Tab, leaves the editor); Ctrl+Space completes code.
              </p>
            </section>
          ) : null}

          <Preview
            project={project}
            run={previewRun}
            onRun={() => setPreviewRun((n) => n + 1)}
            onExport={() => void exportProject()}
          />
        </div>
      </div>
    </div>
  )
}

function ProjectPicker({
  workspace,
  busy,
  onNew,
  onPick,
  onDelete,
}: {
  workspace: Workspace
  busy: boolean
  onNew: (stack: Stack) => void
  onPick: (id: string) => void
  onDelete: (id: string) => void
}) {
  const [stack, setStack] = useState<Stack>('static')
  return (
    <section aria-label="Projects" className="card">
      <h2>Projects</h2>
      <div className="row">
        <select
          aria-label="Stack of a new project"
          value={stack}
          onChange={(e) => setStack(e.target.value as Stack)}
        >
          {Object.entries(STACKS).map(([value, label]) => (
            <option key={value} value={value}>
              {label}
            </option>
          ))}
        </select>
        <button type="button" className="small" disabled={busy} onClick={() => onNew(stack)}>
          New project
        </button>
      </div>
      <ul className="projects">
        {workspace.projects.map((p) => (
          <li key={p.id} className={p.id === workspace.current ? 'current' : ''}>
            <button
              type="button"
              className="link"
              disabled={busy}
              aria-current={p.id === workspace.current ? 'true' : undefined}
              onClick={() => onPick(p.id)}
            >
              {p.name}
            </button>
            <button
              type="button"
              className="link small"
              disabled={busy}
              aria-label={`Delete project ${p.name}`}
              onClick={() => {
                if (window.confirm(`Delete the project "${p.name}" from this browser?`))
                  onDelete(p.id)
              }}
            >
              ✕
            </button>
          </li>
        ))}
      </ul>
    </section>
  )
}

function Changes({
  project,
  busy,
  onChange,
  onSelect,
}: {
  project: Project
  busy: boolean
  onChange: (update: (p: Project) => Project) => void
  onSelect: (path: string) => void
}) {
  if (!project.changes.length && !project.history.length) return null
  return (
    <section className="card" aria-label="Last change">
      <div className="row spread">
        <h2>Last change</h2>
        <button
          type="button"
          className="secondary small"
          disabled={busy || !project.history.length}
          onClick={() => onChange((p) => undo(p, Date.now()))}
        >
          Undo
        </button>
      </div>
      {project.changes.length ? (
        <ul className="changes">
          {project.changes.map((c) => (
            <li key={c.path} data-kind={c.kind}>
              <button type="button" className="link" onClick={() => onSelect(c.path)}>
                {c.path}
              </button>{' '}
              <span className={`badge ${c.kind}`}>{c.kind}</span>{' '}
              {c.kind !== 'unchanged' ? (
                <span className="small">
                  <span className="plus">+{c.added}</span>{' '}
                  <span className="minus">−{c.removed}</span>
                </span>
              ) : null}
              {c.kind !== 'unchanged' && project.history.length ? (
                <button
                  type="button"
                  className="link small"
                  disabled={busy}
                  aria-label={`Revert ${c.path}`}
                  onClick={() => onChange((p) => revertFile(p, c.path, Date.now()))}
                >
                  revert
                </button>
              ) : null}
            </li>
          ))}
        </ul>
      ) : (
        <p className="muted">No file changed.</p>
      )}
    </section>
  )
}

interface PreviewError {
  kind: string
  message: string
}

function Preview({
  project,
  run,
  onRun,
  onExport,
}: {
  project: Project
  run: number
  onRun: () => void
  onExport: () => void
}) {
  const frame = useRef<HTMLIFrameElement>(null)
  const [errors, setErrors] = useState<PreviewError[]>([])
  const [html, setHtml] = useState<string | null>(null)
  const plan = useMemo(() => planPreview(project.files), [project.files])
  const runnable = plan.kind === 'static' || plan.kind === 'react'
  const src = window.location.pathname.replace(/\/ui(?:\/.*)?$/, '') + '/ui/preview.html'

  // the document is built when asked (a run), from the files as they are then
  const files = useRef(project.files)
  files.current = project.files
  useEffect(() => {
    if (!run || !runnable) {
      setHtml(null)
      return
    }
    let cancelled = false
    setHtml(null)
    void (async () => {
      const [{ buildPreview }, runtime] = await Promise.all([
        import('../builder/preview'),
        plan.kind === 'react' ? import('../builder/reactRuntime') : Promise.resolve(null),
      ])
      if (cancelled) return
      const built = buildPreview(files.current, runtime?.REACT_RUNTIME ?? {})
      setErrors(built.errors.map((message) => ({ kind: 'compile', message })))
      setHtml(built.html)
    })()
    return () => {
      cancelled = true
    }
  }, [run, runnable, plan.kind, project.id])

  useEffect(() => {
    const onMessage = (event: MessageEvent) => {
      if (!frame.current || event.source !== frame.current.contentWindow) return
      const data = event.data as { type?: string; kind?: string; message?: string }
      if (data?.type === 'relaygate-preview-ready' && html !== null) {
        frame.current.contentWindow?.postMessage({ type: 'relaygate-preview-load', html }, '*')
      } else if (data?.type === 'relaygate-preview-error') {
        setErrors((e) =>
          [...e, { kind: data.kind ?? 'error', message: String(data.message) }].slice(-20),
        )
      }
    }
    window.addEventListener('message', onMessage)
    return () => window.removeEventListener('message', onMessage)
  }, [html])

  return (
    <section className="card preview" aria-label="Preview">
      <div className="row spread">
        <h2>Preview</h2>
        <div className="row">
          <button type="button" className="secondary small" disabled={!runnable} onClick={onRun}>
            {run ? 'Run again' : 'Run preview'}
          </button>
          <button
            type="button"
            className="small"
            disabled={!project.files.length}
            onClick={onExport}
          >
            Export ZIP
          </button>
        </div>
      </div>
      {plan.note ? (
        <p className="note" role="note">
          {plan.note}
        </p>
      ) : null}
      {plan.kind === 'empty' ? (
        <p className="muted">The preview runs once there are files.</p>
      ) : null}
      <div className="preview-body">
        {runnable && html !== null ? (
          <iframe
            key={`${project.id}-${run}`}
            ref={frame}
            title="App preview"
            sandbox="allow-scripts"
            src={src}
          />
        ) : null}
        {errors.length ? (
          <div className="preview-errors" role="alert" aria-label="Preview errors">
            <h3>Errors in the preview</h3>
            <ul>
              {errors.map((e, i) => (
                <li key={i}>
                  <span className="badge">{e.kind}</span> <code>{e.message}</code>
                </li>
              ))}
            </ul>
          </div>
        ) : null}
      </div>
    </section>
  )
}

/** The playground: chat with any model the key may use, streamed; stop at any time;
 * tokens, latency and cost under each reply; conversations kept in this browser; the
 * request as curl or Python. One API call to load (the model list). */

import { useQuery } from '@tanstack/react-query'
import { useEffect, useMemo, useRef, useState, type KeyboardEvent } from 'react'
import { api, ApiError, retryable } from '../api/client'
import { streamChat } from '../api/chat'
import { CopyButton, ModelsNote } from '../components/common'
import {
  addConversation,
  appendToReply,
  changeSettings,
  currentConversation,
  emptyBook,
  failReply,
  isBook,
  removeConversation,
  requestMessages,
  send,
  setReplyStats,
  nextReplyIndex,
  type Book,
  type Message,
  type Stats,
} from '../lib/conversations'
import { formatCost, formatMs, formatTokens } from '../lib/format'
import { renderMarkdown } from '../lib/markdown'
import { curlSnippet, pythonSnippet, type ChatRequestBody } from '../lib/snippet'
import { CONVERSATIONS_ITEM, loadJson } from '../lib/storage'
import { useSession } from '../session'

function newId(): string {
  return Math.random().toString(36).slice(2, 10) + Date.now().toString(36)
}

function loadBook(): Book {
  return loadJson(window.localStorage, CONVERSATIONS_ITEM, emptyBook(newId(), Date.now()), isBook)
}

const sleep = (ms: number) => new Promise((r) => window.setTimeout(r, ms))

export function Playground() {
  const session = useSession()
  const models = useQuery({ queryKey: ['models'], queryFn: () => api.models(session) })
  const [book, setBook] = useState<Book>(loadBook)
  const [draft, setDraft] = useState('')
  const [busy, setBusy] = useState(false)
  const [snippet, setSnippet] = useState<'curl' | 'python' | null>(null)
  const abort = useRef<AbortController | null>(null)
  const bottom = useRef<HTMLDivElement>(null)
  const conversation = currentConversation(book)
  const settings = conversation.settings
  const modelIds = models.data?.data.map((m) => m.id) ?? []
  const model =
    settings.model && modelIds.includes(settings.model)
      ? settings.model
      : (modelIds[0] ?? settings.model)

  useEffect(() => {
    window.localStorage.setItem(CONVERSATIONS_ITEM, JSON.stringify(book))
  }, [book])
  useEffect(() => {
    bottom.current?.scrollIntoView({ block: 'end' })
  }, [conversation.messages])
  useEffect(() => () => abort.current?.abort(), [])

  const requestBody = (messages: { role: string; content: string }[]): ChatRequestBody => ({
    model,
    messages,
    temperature: settings.temperature,
    max_tokens: settings.maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  })
  const preview = useMemo(() => {
    const messages = requestMessages(conversation)
    if (draft.trim()) messages.push({ role: 'user', content: draft })
    return requestBody(messages)
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [conversation, draft, model])

  const submit = async () => {
    const text = draft.trim()
    if (!text || busy || !model) return
    const id = conversation.id
    const reply = nextReplyIndex(conversation)
    const body = requestBody([...requestMessages(conversation), { role: 'user', content: text }])
    setDraft('')
    setBook((b) => send(b, id, text, Date.now()))
    setBusy(true)
    const controller = new AbortController()
    abort.current = controller
    const started = performance.now()
    let first: number | undefined
    let requestId: string | null = null
    let failed = false
    try {
      await streamChat(
        session,
        body,
        controller.signal,
        (delta) => {
          if (delta.error) {
            failed = true
            setBook((b) => failReply(b, id, delta.error!, Date.now()))
            return
          }
          if (delta.text && first === undefined) first = performance.now() - started
          setBook((b) => {
            let next = appendToReply(b, id, delta.text, Date.now())
            if (delta.usage)
              next = setReplyStats(next, id, reply, { usage: delta.usage }, Date.now())
            return next
          })
        },
        (started) => {
          requestId = started.requestId
        },
      )
    } catch (error) {
      if (controller.signal.aborted) {
        setBook((b) => setReplyStats(b, id, reply, { stopped: true }, Date.now()))
      } else {
        failed = true
        const message =
          error instanceof ApiError ? `${error.message} (${error.status})` : String(error)
        setBook((b) => failReply(b, id, message, Date.now()))
        // A key revoked, disabled or expired meanwhile: back to sign-in, saying why, as
        // every other page does when the gateway answers 401.
        if (error instanceof ApiError && error.status === 401) session.refused(error.message)
      }
    } finally {
      const total = performance.now() - started
      if (!failed) {
        setBook((b) =>
          setReplyStats(
            b,
            id,
            reply,
            { ttftMs: first, totalMs: total, requestId: requestId ?? undefined },
            Date.now(),
          ),
        )
      }
      setBusy(false)
      abort.current = null
    }
    if (requestId && !failed) void fetchCost(id, reply, requestId)
  }

  /** The cost is the gateway's own figure, from the usage record written just after the
   * answer (later when the gateway is busy or its database slow): asked for over about
   * 15 s, through a 404 (not written yet) or a passing failure (429, 5xx, the network),
   * then given up (the reply keeps its other figures). */
  const fetchCost = async (id: string, reply: number, requestId: string) => {
    for (const wait of [300, 700, 1500, 2500, 5000, 5000]) {
      await sleep(wait)
      try {
        const record = await api.usageRecord(session, requestId)
        setBook((b) => setReplyStats(b, id, reply, { cost: record.cost }, Date.now()))
        return
      } catch (error) {
        if (error instanceof ApiError && !retryable(error.status)) return
      }
    }
  }

  const onKey = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault()
      void submit()
    }
  }

  return (
    <div className="playground">
      <aside className="conversations" aria-label="Conversations">
        <button
          type="button"
          onClick={() => setBook((b) => addConversation(b, newId(), Date.now()))}
          disabled={busy}
        >
          New chat
        </button>
        <ul>
          {book.conversations.map((c) => (
            <li key={c.id} className={c.id === book.current ? 'current' : ''}>
              <button
                type="button"
                className="link"
                aria-current={c.id === book.current ? 'true' : undefined}
                disabled={busy}
                onClick={() => setBook((b) => ({ ...b, current: c.id }))}
              >
                {c.title}
              </button>
              <button
                type="button"
                className="link small"
                aria-label={`Delete conversation ${c.title}`}
                disabled={busy}
                onClick={() => setBook((b) => removeConversation(b, c.id, newId(), Date.now()))}
              >
                ✕
              </button>
            </li>
          ))}
        </ul>
      </aside>
      <div className="chat">
        <details className="card settings" open>
          <summary>Settings</summary>
          <div className="row">
            <label>
              Model
              <select
                value={model}
                onChange={(e) =>
                  setBook((b) =>
                    changeSettings(b, conversation.id, { model: e.target.value }, Date.now()),
                  )
                }
              >
                {modelIds.map((m) => (
                  <option key={m} value={m}>
                    {m}
                  </option>
                ))}
              </select>
            </label>
            <label>
              Temperature
              <input
                type="number"
                min={0}
                max={2}
                step={0.1}
                value={settings.temperature}
                onChange={(e) =>
                  setBook((b) =>
                    changeSettings(
                      b,
                      conversation.id,
                      { temperature: Number(e.target.value) },
                      Date.now(),
                    ),
                  )
                }
              />
            </label>
            <label>
              Max tokens
              <input
                type="number"
                min={1}
                max={1_000_000}
                value={settings.maxTokens}
                onChange={(e) =>
                  setBook((b) =>
                    changeSettings(
                      b,
                      conversation.id,
                      { maxTokens: Number(e.target.value) },
                      Date.now(),
                    ),
                  )
                }
              />
            </label>
          </div>
          <label>
            System prompt
            <textarea
              rows={2}
              value={settings.system}
              onChange={(e) =>
                setBook((b) =>
                  changeSettings(b, conversation.id, { system: e.target.value }, Date.now()),
                )
              }
            />
          </label>
        </details>
        <ModelsNote models={models} />
        <ol className="messages" aria-label="Messages" aria-live="polite" aria-busy={busy}>
          {conversation.messages.map((m, i) => (
            <MessageView
              key={i}
              message={m}
              streaming={busy && i === conversation.messages.length - 1}
            />
          ))}
          <div ref={bottom} />
        </ol>
        <form
          className="composer"
          aria-label="Send a message"
          onSubmit={(e) => {
            e.preventDefault()
            void submit()
          }}
        >
          <label htmlFor="message" className="sr-only">
            Message
          </label>
          <textarea
            id="message"
            rows={3}
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={onKey}
            placeholder="Message (Enter sends, Shift+Enter is a new line)"
          />
          <div className="composer-buttons">
            {busy ? (
              <button type="button" className="danger" onClick={() => abort.current?.abort()}>
                <span className="spinner" aria-hidden="true" /> Stop
              </button>
            ) : (
              <button type="submit" disabled={!draft.trim() || !model}>
                Send
              </button>
            )}
            <button
              type="button"
              className="secondary"
              aria-expanded={snippet === 'curl'}
              onClick={() => setSnippet(snippet === 'curl' ? null : 'curl')}
            >
              curl
            </button>
            <button
              type="button"
              className="secondary"
              aria-expanded={snippet === 'python'}
              onClick={() => setSnippet(snippet === 'python' ? null : 'python')}
            >
              Python
            </button>
          </div>
        </form>
        {snippet ? (
          <section className="card snippet" aria-label={`The request as ${snippet}`}>
            <div className="card-head">
              <h2>{snippet === 'curl' ? 'curl' : 'Python (openai)'}</h2>
              <CopyButton
                text={
                  snippet === 'curl'
                    ? curlSnippet(session.base, preview)
                    : pythonSnippet(session.base, preview)
                }
                label="Copy snippet"
              />
            </div>
            <pre className="code">
              <code>
                {snippet === 'curl'
                  ? curlSnippet(session.base, preview)
                  : pythonSnippet(session.base, preview)}
              </code>
            </pre>
            <p className="muted small">
              Set RELAYGATE_API_KEY to your key first; the snippet does not contain it.
            </p>
          </section>
        ) : null}
      </div>
    </div>
  )
}

/** What is shown under a reply: "Stopped · 8 in · 18 out tokens · first token 90 ms · …". */
export function replyFigures(s: Stats): string[] {
  const parts: string[] = []
  if (s.stopped) parts.push('Stopped')
  if (s.usage)
    parts.push(`${formatTokens(s.usage.prompt_tokens, s.usage.completion_tokens)} tokens`)
  if (s.ttftMs !== undefined) parts.push(`first token ${formatMs(s.ttftMs)}`)
  if (s.totalMs !== undefined) parts.push(`total ${formatMs(s.totalMs)}`)
  if (s.cost !== undefined) parts.push(`cost ${formatCost(s.cost)}`)
  return parts
}

function MessageView({ message, streaming }: { message: Message; streaming: boolean }) {
  const html = useMemo(
    () => (message.role === 'assistant' ? renderMarkdown(message.content) : ''),
    [message],
  )
  const s = message.stats
  return (
    <li className={`message ${message.role}`}>
      <div className="who">
        {message.role === 'user' ? 'You' : message.role === 'error' ? 'Error' : 'Assistant'}
      </div>
      {message.role === 'assistant' ? (
        <div className="markdown" dangerouslySetInnerHTML={{ __html: html }} />
      ) : (
        <div className="plain" role={message.role === 'error' ? 'alert' : undefined}>
          {message.content}
        </div>
      )}
      {streaming && message.role === 'assistant' ? (
        <div className="muted small" role="status">
          <span className="spinner" aria-hidden="true" /> Generating…
        </div>
      ) : null}
      {s && message.role === 'assistant' && !streaming ? (
        <div className="reply-stats muted small" aria-label="Reply figures">
          {replyFigures(s).join(' · ')}
        </div>
      ) : null}
    </li>
  )
}

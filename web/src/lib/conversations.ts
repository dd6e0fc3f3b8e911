/** The playground's conversations: pure state transitions, kept in local storage. */

import type { Usage } from './sse'

export type Role = 'system' | 'user' | 'assistant' | 'error'

export interface Stats {
  usage?: Usage
  /** Milliseconds from sending to the first token and to the end, measured here. */
  ttftMs?: number
  totalMs?: number
  /** From the gateway's usage record, when it arrived. */
  cost?: number
  requestId?: string
  stopped?: boolean
}

export interface Message {
  role: Role
  content: string
  stats?: Stats
}

export interface Settings {
  model: string
  system: string
  temperature: number
  maxTokens: number
}

export interface Conversation {
  id: string
  title: string
  updatedAt: number
  settings: Settings
  messages: Message[]
}

export interface Book {
  current: string
  conversations: Conversation[]
}

export const MAX_CONVERSATIONS = 50
export const DEFAULT_SETTINGS: Settings = {
  model: '',
  system: '',
  temperature: 0.7,
  maxTokens: 1024,
}

export function newConversation(
  id: string,
  now: number,
  settings?: Partial<Settings>,
): Conversation {
  return {
    id,
    title: 'New chat',
    updatedAt: now,
    settings: { ...DEFAULT_SETTINGS, ...settings },
    messages: [],
  }
}

export function emptyBook(id: string, now: number): Book {
  return { current: id, conversations: [newConversation(id, now)] }
}

export function currentConversation(book: Book): Conversation {
  return book.conversations.find((c) => c.id === book.current) ?? book.conversations[0]!
}

function update(
  book: Book,
  id: string,
  now: number,
  change: (c: Conversation) => Conversation,
): Book {
  return {
    ...book,
    conversations: book.conversations.map((c) =>
      c.id === id ? { ...change(c), updatedAt: now } : c,
    ),
  }
}

function titleFrom(text: string): string {
  const line = text.trim().split('\n')[0] ?? ''
  return line.length > 40 ? `${line.slice(0, 40)}…` : line || 'New chat'
}

/** The user sends: their message, and an empty reply to stream into. */
export function send(book: Book, id: string, text: string, now: number): Book {
  return update(book, id, now, (c) => ({
    ...c,
    title: c.messages.length === 0 ? titleFrom(text) : c.title,
    messages: [...c.messages, { role: 'user', content: text }, { role: 'assistant', content: '' }],
  }))
}

/** Text streamed into the last reply. */
export function appendToReply(book: Book, id: string, text: string, now: number): Book {
  if (!text) return book
  return update(book, id, now, (c) => {
    const messages = c.messages.slice()
    const last = messages[messages.length - 1]
    if (!last || last.role !== 'assistant') return c
    messages[messages.length - 1] = { ...last, content: last.content + text }
    return { ...c, messages }
  })
}

/** Figures for the reply at ``index`` (figures can arrive after the next message was sent). */
export function setReplyStats(
  book: Book,
  id: string,
  index: number,
  stats: Stats,
  now: number,
): Book {
  return update(book, id, now, (c) => {
    const m = c.messages[index]
    if (!m || m.role !== 'assistant') return c
    const messages = c.messages.slice()
    messages[index] = { ...m, stats: { ...m.stats, ...stats } }
    return { ...c, messages }
  })
}

/** Where the reply to a message sent now will be. */
export function nextReplyIndex(c: Conversation): number {
  return c.messages.length + 1
}

/** The reply failed: an error shown in the chat; an empty reply is replaced by it. */
export function failReply(book: Book, id: string, message: string, now: number): Book {
  return update(book, id, now, (c) => {
    const messages = c.messages.slice()
    const last = messages[messages.length - 1]
    if (last && last.role === 'assistant' && !last.content) messages.pop()
    messages.push({ role: 'error', content: message })
    return { ...c, messages }
  })
}

export function changeSettings(
  book: Book,
  id: string,
  settings: Partial<Settings>,
  now: number,
): Book {
  return update(book, id, now, (c) => ({ ...c, settings: { ...c.settings, ...settings } }))
}

export function addConversation(book: Book, id: string, now: number): Book {
  const settings = currentConversation(book).settings
  const conversations = [newConversation(id, now, settings), ...book.conversations]
  return { current: id, conversations: conversations.slice(0, MAX_CONVERSATIONS) }
}

export function removeConversation(book: Book, id: string, newId: string, now: number): Book {
  const conversations = book.conversations.filter((c) => c.id !== id)
  if (conversations.length === 0) return emptyBook(newId, now)
  const current = book.current === id ? conversations[0]!.id : book.current
  return { current, conversations }
}

/** The messages sent upstream: the system prompt first, errors and empty replies left out. */
export function requestMessages(c: Conversation): { role: string; content: string }[] {
  const out: { role: string; content: string }[] = []
  if (c.settings.system.trim()) out.push({ role: 'system', content: c.settings.system })
  for (const m of c.messages) {
    if (m.role === 'error' || (m.role === 'assistant' && !m.content)) continue
    out.push({ role: m.role, content: m.content })
  }
  return out
}

export function isBook(value: unknown): value is Book {
  if (!value || typeof value !== 'object') return false
  const v = value as Book
  return (
    typeof v.current === 'string' &&
    Array.isArray(v.conversations) &&
    v.conversations.length > 0 &&
    v.conversations.every(
      (c) =>
        c &&
        typeof c.id === 'string' &&
        Array.isArray(c.messages) &&
        typeof c.settings === 'object',
    )
  )
}

import { describe, expect, it } from 'vitest'
import {
  addConversation,
  appendToReply,
  changeSettings,
  currentConversation,
  emptyBook,
  failReply,
  isBook,
  MAX_CONVERSATIONS,
  nextReplyIndex,
  removeConversation,
  requestMessages,
  send,
  setReplyStats,
} from './conversations'

describe('conversation state', () => {
  it('a message, its streamed reply and the reply figures', () => {
    let book = emptyBook('a', 1)
    book = send(book, 'a', 'What is relaygate?\nA second line', 2)
    book = appendToReply(book, 'a', 'A gate', 3)
    book = appendToReply(book, 'a', 'way.', 4)
    book = setReplyStats(
      book,
      'a',
      1,
      { usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 } },
      5,
    )
    book = setReplyStats(book, 'a', 1, { totalMs: 120 }, 6)
    const c = currentConversation(book)
    expect(c.title).toBe('What is relaygate?')
    expect(c.updatedAt).toBe(6)
    expect(c.messages).toEqual([
      { role: 'user', content: 'What is relaygate?\nA second line' },
      {
        role: 'assistant',
        content: 'A gateway.',
        stats: { usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 }, totalMs: 120 },
      },
    ])
  })

  it('figures that arrive late go to their own reply, not the newest one', () => {
    let book = send(emptyBook('a', 1), 'a', 'first', 2)
    const first = nextReplyIndex(currentConversation(emptyBook('a', 1)))
    expect(first).toBe(1)
    book = appendToReply(book, 'a', 'one', 3)
    const second = nextReplyIndex(currentConversation(book))
    book = send(book, 'a', 'second', 4)
    book = appendToReply(book, 'a', 'two', 5)
    book = setReplyStats(book, 'a', first, { cost: 0.5 }, 6)
    book = setReplyStats(book, 'a', 0, { cost: 9 }, 7) // a user message takes no figures
    const messages = currentConversation(book).messages
    expect(second).toBe(3)
    expect(messages.map((m) => m.stats?.cost)).toEqual([undefined, 0.5, undefined, undefined])
  })

  it('a failed reply becomes an error in the chat, and is not sent upstream again', () => {
    let book = send(emptyBook('a', 1), 'a', 'hi', 2)
    book = failReply(book, 'a', 'Rate limit reached (429)', 3)
    book = changeSettings(book, 'a', { system: 'Be brief.' }, 4)
    const c = currentConversation(book)
    expect(c.messages.map((m) => m.role)).toEqual(['user', 'error'])
    expect(requestMessages(c)).toEqual([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'hi' },
    ])
  })

  it('a partial reply that failed keeps its text, then the error', () => {
    let book = send(emptyBook('a', 1), 'a', 'hi', 2)
    book = appendToReply(book, 'a', 'Hel', 3)
    book = failReply(book, 'a', 'upstream reset', 4)
    expect(currentConversation(book).messages.map((m) => [m.role, m.content])).toEqual([
      ['user', 'hi'],
      ['assistant', 'Hel'],
      ['error', 'upstream reset'],
    ])
  })

  it('new conversations keep the settings, are capped, and removing the last leaves an empty one', () => {
    let book = changeSettings(emptyBook('a', 1), 'a', { model: 'mock', temperature: 0.2 }, 1)
    book = addConversation(book, 'b', 2)
    expect(book.current).toBe('b')
    expect(currentConversation(book).settings.model).toBe('mock')
    for (let i = 0; i < MAX_CONVERSATIONS + 5; i++) book = addConversation(book, `x${i}`, 3 + i)
    expect(book.conversations).toHaveLength(MAX_CONVERSATIONS)
    book = removeConversation(book, book.current, 'unused', 100)
    expect(book.current).toBe(book.conversations[0]!.id)
    let one = emptyBook('only', 1)
    one = removeConversation(one, 'only', 'fresh', 2)
    expect(one.current).toBe('fresh')
    expect(one.conversations).toHaveLength(1)
  })

  it('stored state is checked before it is used', () => {
    expect(isBook(emptyBook('a', 1))).toBe(true)
    for (const bad of [
      null,
      'x',
      {},
      { current: 'a', conversations: [] },
      { current: 'a', conversations: [{ id: 1 }] },
    ]) {
      expect(isBook(bad)).toBe(false)
    }
  })
})

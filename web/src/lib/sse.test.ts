import { describe, expect, it } from 'vitest'
import { parseChatEvent, SseParser } from './sse'

describe('SseParser', () => {
  it('yields events split across chunks at any byte', () => {
    const text = 'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    for (let cut = 0; cut <= text.length; cut++) {
      const parser = new SseParser()
      const events = [
        ...parser.push(text.slice(0, cut)),
        ...parser.push(text.slice(cut)),
        ...parser.flush(),
      ]
      expect(events.map((e) => e.data)).toEqual(['{"a":1}', '{"b":2}', '[DONE]'])
    }
  })

  it('handles CRLF, CR, comments, event names and multi-line data', () => {
    const parser = new SseParser()
    const events = [
      ...parser.push(
        ': keep-alive\r\nevent: error\r\ndata: line one\r\ndata: line two\r\n\r\ndata:x\r\r',
      ),
      ...parser.flush(), // a CR at the very end might have been the start of a CRLF
    ]
    expect(events).toEqual([
      { event: 'error', data: 'line one\nline two' },
      { event: 'message', data: 'x' },
    ])
  })

  it('a CRLF split between chunks is one line end', () => {
    const parser = new SseParser()
    expect(parser.push('data: a\r')).toEqual([])
    expect(parser.push('\n\r\n')).toEqual([{ event: 'message', data: 'a' }])
  })

  it('flush completes a last event without its blank line, and nothing else', () => {
    const parser = new SseParser()
    expect(parser.push('data: tail')).toEqual([])
    expect(parser.flush()).toEqual([{ event: 'message', data: 'tail' }])
    expect(parser.flush()).toEqual([])
  })
})

describe('parseChatEvent', () => {
  const event = (data: unknown) => ({
    event: 'message',
    data: typeof data === 'string' ? data : JSON.stringify(data),
  })

  it('reads the text, the finish reason and the usage of the last chunk', () => {
    expect(
      parseChatEvent(
        event({ model: 'm', choices: [{ delta: { content: 'Hi' }, finish_reason: null }] }),
      ),
    ).toEqual({
      text: 'Hi',
      done: false,
      model: 'm',
    })
    const usage = { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 }
    expect(parseChatEvent(event({ choices: [], usage }))).toEqual({ text: '', done: false, usage })
    expect(
      parseChatEvent(event({ choices: [{ delta: {}, finish_reason: 'stop' }] })).finishReason,
    ).toBe('stop')
    expect(parseChatEvent(event({ choices: [{ delta: { content: null } }] })).text).toBe('')
  })

  it('[DONE] ends the stream', () => {
    expect(parseChatEvent(event('[DONE]'))).toEqual({ text: '', done: true })
  })

  it('an error event mid-stream is an error, in either shape', () => {
    expect(
      parseChatEvent(event({ error: { message: 'upstream timed out', type: 'timeout' } })).error,
    ).toBe('upstream timed out')
    expect(parseChatEvent(event({ error: 'model not found' })).error).toBe('model not found')
  })

  it('something that is not JSON is reported, not thrown', () => {
    expect(parseChatEvent(event('{oops')).error).toMatch(/not JSON: \{oops/)
  })
})

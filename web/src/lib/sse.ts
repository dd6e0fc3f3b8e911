/** Server-sent events, parsed incrementally from a byte stream (the chat stream). */

export interface SseEvent {
  event: string
  data: string
}

/**
 * Feeds text chunks, yields complete events. Handles events split across chunks, CRLF or
 * LF line ends, multi-line data, comments (": keep-alive") and a final event without its
 * blank line (flush()).
 */
export class SseParser {
  private buffer = ''
  private data: string[] = []
  private event = ''

  push(chunk: string): SseEvent[] {
    this.buffer += chunk
    const out: SseEvent[] = []
    let newline: number
    while ((newline = this.nextLineEnd()) >= 0) {
      let line = this.buffer.slice(0, newline)
      const skip = this.buffer[newline] === '\r' && this.buffer[newline + 1] === '\n' ? 2 : 1
      this.buffer = this.buffer.slice(newline + skip)
      if (line.endsWith('\r')) line = line.slice(0, -1)
      this.line(line, out)
    }
    return out
  }

  /** The stream ended: an event still being collected is complete. */
  flush(): SseEvent[] {
    const out: SseEvent[] = []
    if (this.buffer) {
      this.line(this.buffer, out)
      this.buffer = ''
    }
    this.line('', out)
    return out
  }

  private nextLineEnd(): number {
    const n = this.buffer.indexOf('\n')
    const r = this.buffer.indexOf('\r')
    if (r >= 0 && r === this.buffer.length - 1) return n // a CR at the end may start CRLF
    if (n < 0) return r
    if (r < 0) return n
    return Math.min(n, r)
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === '') {
      if (this.data.length) out.push({ event: this.event || 'message', data: this.data.join('\n') })
      this.data = []
      this.event = ''
      return
    }
    if (line.startsWith(':')) return
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    let value = colon < 0 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'data') this.data.push(value)
    else if (field === 'event') this.event = value
  }
}

export interface Usage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
}

export interface ChatDelta {
  /** Text to append to the reply. */
  text: string
  /** The usage, in the last chunk (stream_options.include_usage). */
  usage?: Usage
  finishReason?: string
  model?: string
  /** An error event the gateway sent mid-stream. */
  error?: string
  done: boolean
}

/** One OpenAI chat-completion stream event, reduced to what the playground shows. */
export function parseChatEvent(event: SseEvent): ChatDelta {
  if (event.data === '[DONE]') return { text: '', done: true }
  let chunk: unknown
  try {
    chunk = JSON.parse(event.data)
  } catch {
    return {
      text: '',
      done: false,
      error: `The stream sent something that is not JSON: ${event.data.slice(0, 80)}`,
    }
  }
  const body = chunk as {
    error?: { message?: string } | string
    choices?: { delta?: { content?: string | null }; finish_reason?: string | null }[]
    usage?: Usage | null
    model?: string
  }
  if (body.error) {
    const message = typeof body.error === 'string' ? body.error : body.error.message
    return { text: '', done: false, error: message ?? 'The gateway reported an error.' }
  }
  const choice = body.choices?.[0]
  const delta: ChatDelta = { text: choice?.delta?.content ?? '', done: false }
  if (choice?.finish_reason) delta.finishReason = choice.finish_reason
  if (body.usage) delta.usage = body.usage
  if (body.model) delta.model = body.model
  return delta
}

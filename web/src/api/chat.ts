/** The playground's one streamed call: POST /v1/chat/completions with stream: true. */

import { errorFrom, headers, type Session } from './client'
import type { ChatRequestBody } from '../lib/snippet'
import { parseChatEvent, SseParser, type ChatDelta } from '../lib/sse'

export interface StreamResult {
  requestId: string | null
  /** The X-RateLimit-* headers the gateway sent, when it sent them. */
  rateLimit: { limit: string; remaining: string; reset: string } | null
}

export async function streamChat(
  session: Session,
  body: ChatRequestBody,
  signal: AbortSignal,
  onDelta: (delta: ChatDelta) => void,
  onStart: (result: StreamResult) => void = () => {},
): Promise<StreamResult> {
  const response = await fetch(`${session.base}/v1/chat/completions`, {
    method: 'POST',
    headers: headers(session, true),
    body: JSON.stringify(body),
    signal,
  })
  if (!response.ok) throw await errorFrom(response)
  const limit = response.headers.get('x-ratelimit-limit')
  const result: StreamResult = {
    requestId: response.headers.get('x-request-id'),
    rateLimit: limit
      ? {
          limit,
          remaining: response.headers.get('x-ratelimit-remaining') ?? '',
          reset: response.headers.get('x-ratelimit-reset') ?? '',
        }
      : null,
  }
  onStart(result) // the request id is known before the answer ends (or is stopped)
  if (!response.body) return result
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
  const parser = new SseParser()
  for (;;) {
    const { value, done } = await reader.read()
    const events = done ? parser.flush() : parser.push(value)
    for (const event of events) onDelta(parseChatEvent(event))
    if (done) return result
  }
}

import { describe, expect, it } from 'vitest'
import { retryable } from './client'

describe('retryable', () => {
  it('asks again for what may change: not there yet, too early, the gateway failing', () => {
    for (const status of [404, 408, 429, 500, 502, 503, 504]) expect(retryable(status)).toBe(true)
  })
  it('gives up on an answer that will not change', () => {
    for (const status of [400, 401, 403, 405, 409, 422]) expect(retryable(status)).toBe(false)
  })
})

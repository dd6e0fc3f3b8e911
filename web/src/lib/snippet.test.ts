import { describe, expect, it } from 'vitest'
import { curlSnippet, pythonSnippet, type ChatRequestBody } from './snippet'

const body: ChatRequestBody = {
  model: 'mock',
  messages: [
    { role: 'system', content: "It's fine" },
    { role: 'user', content: 'Say "hi"\nthen stop' },
  ],
  temperature: 0.5,
  max_tokens: 64,
  stream: true,
  stream_options: { include_usage: true },
}

describe('snippets', () => {
  it('curl quotes the body for a POSIX shell and reads the key from the environment', () => {
    const curl = curlSnippet('http://gw:8080', body)
    expect(curl).toContain(`curl 'http://gw:8080/v1/chat/completions'`)
    expect(curl).toContain('$RELAYGATE_API_KEY')
    expect(curl).toContain(`It'\\''s fine`) // the single quote closed, escaped, reopened
    const quoted = curl.slice(curl.indexOf("-d '") + 4, -1).replace(/'\\''/g, "'")
    expect(JSON.parse(quoted)).toEqual(body)
  })

  it('Python uses the openai SDK with valid string literals', () => {
    const py = pythonSnippet('http://gw:8080', body)
    expect(py).toContain('base_url="http://gw:8080/v1"')
    expect(py).toContain('api_key=os.environ["RELAYGATE_API_KEY"]')
    expect(py).toContain('"content": "Say \\"hi\\"\\nthen stop"')
    expect(py).toContain('max_tokens=64')
  })
})

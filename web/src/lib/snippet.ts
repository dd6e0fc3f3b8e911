/** The playground's request as a copyable curl command or Python (openai SDK) script. */

export interface ChatRequestBody {
  model: string
  messages: { role: string; content: string }[]
  temperature: number
  max_tokens: number
  stream: boolean
  stream_options?: { include_usage: boolean }
}

function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`
}

/** The key is never written into a snippet: it reads $RELAYGATE_API_KEY. */
export function curlSnippet(baseUrl: string, body: ChatRequestBody): string {
  return [
    `curl ${shellQuote(`${baseUrl}/v1/chat/completions`)} \\`,
    `  -H "Authorization: Bearer $RELAYGATE_API_KEY" \\`,
    `  -H 'Content-Type: application/json' \\`,
    `  -d ${shellQuote(JSON.stringify(body, null, 2))}`,
  ].join('\n')
}

function pyString(text: string): string {
  return JSON.stringify(text) // a JSON string is a valid Python string literal
}

export function pythonSnippet(baseUrl: string, body: ChatRequestBody): string {
  const messages = body.messages
    .map((m) => `        {"role": ${pyString(m.role)}, "content": ${pyString(m.content)}},`)
    .join('\n')
  const lines = [
    'import os',
    '',
    'from openai import OpenAI',
    '',
    `client = OpenAI(base_url=${pyString(`${baseUrl}/v1`)}, api_key=os.environ["RELAYGATE_API_KEY"])`,
    'stream = client.chat.completions.create(',
    `    model=${pyString(body.model)},`,
    '    messages=[',
    messages,
    '    ],',
    `    temperature=${body.temperature},`,
    `    max_tokens=${body.max_tokens},`,
    '    stream=True,',
    '    stream_options={"include_usage": True},',
    ')',
    'for chunk in stream:',
    '    if chunk.choices and chunk.choices[0].delta.content:',
    '        print(chunk.choices[0].delta.content, end="", flush=True)',
    '    if chunk.usage:',
    '        print("\\n", chunk.usage)',
  ]
  return lines.join('\n')
}

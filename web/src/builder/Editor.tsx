/** A code editor: a textarea over a highlight.js rendering of the same text (the same
 * font and metrics, scrolled together). Tab indents (Escape, then Tab, leaves the field);
 * Ctrl+Space asks the gateway's code-completion endpoint for what comes next. */

import hljs from 'highlight.js/lib/core'
import css from 'highlight.js/lib/languages/css'
import javascript from 'highlight.js/lib/languages/javascript'
import json from 'highlight.js/lib/languages/json'
import markdown from 'highlight.js/lib/languages/markdown'
import typescript from 'highlight.js/lib/languages/typescript'
import xml from 'highlight.js/lib/languages/xml'
import { useMemo, useRef, type KeyboardEvent } from 'react'
import { languageOf } from './parse'

for (const [name, language] of Object.entries({
  css,
  javascript,
  json,
  markdown,
  typescript,
  xml,
})) {
  if (!hljs.getLanguage(name)) hljs.registerLanguage(name, language)
}

/** Highlighted HTML for a file (highlight.js escapes the text it is given). */
export function highlight(path: string, code: string): string {
  const language = languageOf(path)
  const text = code.endsWith('\n') ? code + ' ' : code // the last empty line keeps its height
  if (!hljs.getLanguage(language) || code.length > 200_000) {
    return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
  }
  return hljs.highlight(text, { language, ignoreIllegals: true }).value
}

export function Editor({
  path,
  value,
  onChange,
  onComplete,
  readOnly,
}: {
  path: string
  value: string
  onChange: (next: string) => void
  /** The code before the cursor → what to insert there (null: nothing). */
  onComplete?: (before: string) => Promise<string | null>
  readOnly?: boolean
}) {
  const area = useRef<HTMLTextAreaElement>(null)
  const pre = useRef<HTMLPreElement>(null)
  const escaped = useRef(false)
  const html = useMemo(() => highlight(path, value), [path, value])

  const insert = (text: string) => {
    const el = area.current
    if (!el) return
    const { selectionStart: start, selectionEnd: end } = el
    onChange(value.slice(0, start) + text + value.slice(end))
    requestAnimationFrame(() => {
      el.selectionStart = el.selectionEnd = start + text.length
    })
  }

  const onKey = async (event: KeyboardEvent<HTMLTextAreaElement>) => {
    if (readOnly) return
    if (event.key === 'Escape') {
      escaped.current = true
      return
    }
    if (event.key === 'Tab' && !escaped.current && !event.shiftKey) {
      event.preventDefault()
      insert('  ')
    } else if (event.key === ' ' && event.ctrlKey && onComplete) {
      event.preventDefault()
      const el = event.currentTarget
      const text = await onComplete(value.slice(0, el.selectionStart))
      if (text) insert(text)
    }
    escaped.current = false
  }

  return (
    <div className="code-editor">
      <pre ref={pre} aria-hidden="true" className="hljs">
        <code dangerouslySetInnerHTML={{ __html: html }} />
      </pre>
      <textarea
        ref={area}
        aria-label={`Contents of ${path}`}
        spellCheck={false}
        autoCapitalize="off"
        autoComplete="off"
        wrap="off"
        readOnly={readOnly}
        value={value}
        onChange={(e) => onChange(e.target.value)}
        onKeyDown={(e) => void onKey(e)}
        onScroll={(e) => {
          if (pre.current) {
            pre.current.scrollTop = e.currentTarget.scrollTop
            pre.current.scrollLeft = e.currentTarget.scrollLeft
          }
        }}
      />
    </div>
  )
}

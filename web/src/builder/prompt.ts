/** What the builder sends the model: a system prompt that asks for the fenced-file format
 * and names the stack, then the current files (on follow-ups) and the request. */

import { formatFiles } from './parse'
import { MAX_FILES } from './parse'
import { STACKS, type Project, type Stack } from './project'

/** The marker the development model (`mock`) recognises the builder by. */
export const BUILDER_MARKER = 'relaygate-builder-format v1'

const LAYOUT: Record<Stack, string> = {
  static:
    'Write a static site: index.html at the root, with its CSS and JavaScript in separate ' +
    'files it links (style.css, app.js). No build step, no npm packages.',
  react:
    'Use the Vite layout: index.html at the root loading /src/main.tsx, src/main.tsx ' +
    'rendering <App /> into #root with react-dom/client, src/App.tsx, CSS files imported ' +
    'from the components, and a package.json with react, react-dom, vite and ' +
    '@vitejs/plugin-react. Use only react and react-dom as runtime packages.',
  vue:
    'Use the Vite layout: index.html at the root loading /src/main.js, src/main.js ' +
    'mounting src/App.vue, single-file components, and a package.json with vue, vite and ' +
    '@vitejs/plugin-vue.',
}

export function systemPrompt(stack: Stack): string {
  return [
    `You are an app builder (${BUILDER_MARKER}). The user describes a web app; you write its files.`,
    `Stack: ${STACKS[stack]}. ${LAYOUT[stack]}`,
    'Answer format: each file as a fenced code block whose info string is the language and ' +
      'file=<path>, for example:',
    '```html file=index.html\n<!doctype html>\n...\n```',
    'Paths are relative to the project root. Write every file you add or change in full; ' +
      'files you do not mention stay as they are. Never abbreviate a file with "..." or ' +
      `"rest unchanged". At most ${MAX_FILES} files. Before the files, say in one or two ` +
      'sentences what you built or changed; put nothing after the last file.',
  ].join('\n')
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant'
  content: string
}

/** The request for a project: the whole current state in one user message (so the
 * model sees the files as they are now, hand edits and undos included). */
export function builderMessages(project: Project, request: string): ChatMessage[] {
  const messages: ChatMessage[] = [{ role: 'system', content: systemPrompt(project.stack) }]
  const asked = project.turns.filter((t) => t.role === 'user').map((t) => t.content)
  if (!project.files.length) {
    messages.push({ role: 'user', content: request })
    return messages
  }
  const earlier = asked.length
    ? 'Earlier requests:\n' + asked.map((a) => `- ${a.split('\n')[0]}`).join('\n') + '\n\n'
    : ''
  messages.push({
    role: 'user',
    content:
      `${earlier}The project's current files:\n\n${formatFiles(project.files)}\n\n` +
      `Request: ${request}\n\nAnswer with the files you change or add, in full.`,
  })
  return messages
}

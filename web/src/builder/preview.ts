/** The live preview: a project's files made into one HTML document that the sandboxed
 * frame (/ui/preview.html) writes into itself. Stylesheets and scripts are inlined;
 * JavaScript, TypeScript and JSX modules are compiled with sucrase into a tiny CommonJS
 * loader, with React (built from the npm package, not a CDN) as the only packages. Errors
 * inside the frame are posted to the page (`relaygate-preview-error`). */

import { transform } from 'sucrase'
import { planPreview } from './plan'
import type { ProjectFile } from './project'

/** `</script` inside inlined code would end the script element early. */
const CODE = /\.(?:[cm]?js|jsx|ts|tsx)$/

const scriptSafe = (code: string) => code.replace(/<\/(script)/gi, '<\\/$1')
const styleSafe = (code: string) => code.replace(/<\/(style)/gi, '<\\/$1')

function normal(path: string): string {
  const out: string[] = []
  for (const part of path.replace(/^\/+/, '').split('/')) {
    if (part === '..') out.pop()
    else if (part && part !== '.') out.push(part)
  }
  return out.join('/')
}

/** The script that reports errors to the page; first in every preview document. */
const REPORTER = `(function(){
function send(kind,message){try{parent.postMessage({type:'relaygate-preview-error',kind:kind,message:String(message).slice(0,2000)},'*')}catch(e){}}
window.addEventListener('error',function(e){send('error',e.error&&e.error.stack?e.error.message:(e.message||'error'))});
window.addEventListener('unhandledrejection',function(e){send('error','Unhandled promise rejection: '+(e.reason&&e.reason.message||e.reason))});
var ce=console.error;console.error=function(){send('console',Array.prototype.map.call(arguments,String).join(' '));return ce.apply(console,arguments)};
window.addEventListener('load',function(){parent.postMessage({type:'relaygate-preview-loaded'},'*')});
var mem={};var storage={getItem:function(k){return k in mem?mem[k]:null},setItem:function(k,v){mem[k]=String(v)},removeItem:function(k){delete mem[k]},clear:function(){mem={}},key:function(i){return Object.keys(mem)[i]||null},get length(){return Object.keys(mem).length}};
['localStorage','sessionStorage'].forEach(function(n){try{window[n].length}catch(e){try{Object.defineProperty(window,n,{value:storage,configurable:true})}catch(e2){}}});
})();`

/** A CommonJS loader over modules defined with __rg_define(path, fn). */
const LOADER = `(function(){
var defs={},cache={};var process={env:{NODE_ENV:'production'}};window.process=window.process||process;
window.__rg_define=function(n,f){defs[n]=f};
var exts=['','.tsx','.ts','.jsx','.js','.mjs','.json','.css','/index.tsx','/index.ts','/index.jsx','/index.js'];
function norm(p){var o=[];p.split('/').forEach(function(s){if(s==='..')o.pop();else if(s&&s!=='.')o.push(s)});return o.join('/')}
function resolve(from,spec){if(defs[spec])return spec;var base;if(spec.charAt(0)==='/')base=norm(spec);else if(spec.charAt(0)==='.'){var d=from.split('/');d.pop();base=norm(d.join('/')+'/'+spec)}else throw new Error('The preview has no package "'+spec+'" (only react and react-dom); export the project to run it with npm.');
for(var i=0;i<exts.length;i++){if(defs[base+exts[i]])return base+exts[i]}throw new Error('Cannot find "'+spec+'" imported from '+from)}
window.__rg_require=function req(name,from){var id=from===undefined?name:resolve(from,name);if(cache[id])return cache[id].exports;if(!defs[id])throw new Error('No module '+id);
var m={exports:{}};cache[id]=m;defs[id].call(m.exports,function(s){return req(s,id)},m,m.exports);return m.exports};
})();`

export interface PreviewDocument {
  html: string
  /** Compile errors, found before the frame runs anything. */
  errors: string[]
}

function compile(path: string, code: string): string {
  const typescript = /\.tsx?$/.test(path)
  return transform(code, {
    transforms: typescript ? ['typescript', 'jsx', 'imports'] : ['jsx', 'imports'],
    jsxRuntime: 'automatic',
    production: true,
    filePath: path,
  }).code
}

function moduleSource(f: ProjectFile, errors: string[]): string | null {
  if (f.path.endsWith('.css')) {
    return `var s=document.createElement('style');s.setAttribute('data-file',${JSON.stringify(f.path)});s.textContent=${JSON.stringify(f.content)};document.head.appendChild(s);`
  }
  if (f.path.endsWith('.json')) return `module.exports=${JSON.stringify(safeJson(f.content))};`
  if (/\.(?:svg|png|jpe?g|gif|webp)$/.test(f.path)) return `module.exports={default:''};`
  if (!CODE.test(f.path)) return null
  try {
    return compile(f.path, f.content)
  } catch (error) {
    errors.push(`${f.path}: ${error instanceof Error ? error.message : String(error)}`)
    return null
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return null
  }
}

/** The module scripts the page's HTML names (`<script type="module" src=...>`). */
const MODULE_TAG = /<script\b([^>]*)\btype\s*=\s*["']module["']([^>]*)>\s*<\/script>/gi
const SCRIPT_TAG = /<script\b([^>]*)\bsrc\s*=\s*["']([^"']+)["']([^>]*)>\s*<\/script>/gi
const LINK_TAG = /<link\b[^>]*\bhref\s*=\s*["']([^"']+)["'][^>]*>/gi

export function buildPreview(
  files: ProjectFile[],
  runtime: Record<string, string> = {},
): PreviewDocument {
  const errors: string[] = []
  const byPath = new Map(files.map((f) => [f.path, f]))
  const plan = planPreview(files)
  const page = byPath.get('index.html') ?? files.find((f) => f.path.endsWith('.html'))
  const pageDir =
    page && page.path.includes('/') ? page.path.slice(0, page.path.lastIndexOf('/') + 1) : ''
  const local = (href: string) =>
    /^(?:[a-z]+:)?\/\//i.test(href) || href.startsWith('data:')
      ? null
      : normal(href.startsWith('/') ? href : pageDir + href)
  let html =
    page?.content ??
    '<!doctype html><html><head><meta charset="utf-8"></head><body><div id="root"></div><div id="app"></div></body></html>'

  // stylesheets the page links: inlined
  html = html.replace(LINK_TAG, (tag, href: string) => {
    if (!/stylesheet/i.test(tag)) return /rel\s*=\s*["']?(?:icon|manifest)/i.test(tag) ? '' : tag
    const path = local(href)
    const f = path ? byPath.get(path) : undefined
    return f ? `<style data-file="${f.path}">\n${styleSafe(f.content)}\n</style>` : tag
  })

  // module entries: compiled, with every other code file, into the loader
  const entries: string[] = []
  html = html.replace(MODULE_TAG, (tag, a: string, b: string) => {
    const src = /\bsrc\s*=\s*["']([^"']+)["']/i.exec(a + b)?.[1]
    const path = src ? local(src) : null
    if (path && byPath.has(path)) {
      entries.push(path)
      return ''
    }
    return tag
  })
  // classic scripts: inlined as they are
  html = html.replace(SCRIPT_TAG, (tag, _a: string, src: string) => {
    const path = local(src)
    const f = path ? byPath.get(path) : undefined
    if (!f) return tag
    if (/\.(?:tsx?|jsx)$/.test(f.path)) {
      entries.push(f.path)
      return ''
    }
    return `<script data-file="${f.path}">\n${scriptSafe(f.content)}\n</script>`
  })
  if (!entries.length && plan.kind === 'react') {
    const main = [
      'src/main.tsx',
      'src/main.jsx',
      'src/index.tsx',
      'src/index.jsx',
      'main.jsx',
      'index.jsx',
    ].find((p) => byPath.has(p))
    const app = files.find((f) => /(?:^|\/)App\.(?:tsx|jsx)$/.test(f.path))
    if (main) entries.push(main)
    else if (app) entries.push('__rg_main.jsx')
    if (!main && app) {
      byPath.set('__rg_main.jsx', {
        path: '__rg_main.jsx',
        content: `import { createRoot } from 'react-dom/client'\nimport App from './${app.path.replace(/\.(?:tsx|jsx)$/, '')}'\ncreateRoot(document.getElementById('root')).render(<App />)\n`,
      })
    }
  }

  const parts: string[] = [`<script>${REPORTER}</script>`]
  if (entries.length) {
    const modules: string[] = [LOADER]
    for (const [name, source] of Object.entries(runtime)) {
      modules.push(
        `__rg_define(${JSON.stringify(name)},function(require,module,exports){${source}\n});`,
      )
    }
    for (const f of byPath.values()) {
      const source = moduleSource(f, errors)
      if (source === null) continue
      modules.push(
        `__rg_define(${JSON.stringify(f.path)},function(require,module,exports){${source}\n});`,
      )
    }
    const run = entries.map((e) => `__rg_require(${JSON.stringify(e)});`).join('')
    modules.push(`window.addEventListener('DOMContentLoaded',function(){${run}});`)
    parts.push(`<script>${scriptSafe(modules.join('\n'))}</script>`)
  }
  const head = parts.join('\n')
  html = /<head[^>]*>/i.test(html)
    ? html.replace(/<head[^>]*>/i, (m) => `${m}\n${head}`)
    : head + html
  return { html, errors }
}

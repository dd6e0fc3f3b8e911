/** React for the preview frame, as the npm package's own CommonJS production files (text,
 * loaded only when a React project is previewed; nothing is fetched from a CDN). */

import react from '../../node_modules/react/cjs/react.production.js?raw'
import jsxRuntime from '../../node_modules/react/cjs/react-jsx-runtime.production.js?raw'
import reactDom from '../../node_modules/react-dom/cjs/react-dom.production.js?raw'
import reactDomClient from '../../node_modules/react-dom/cjs/react-dom-client.production.js?raw'
import scheduler from '../../node_modules/scheduler/cjs/scheduler.production.js?raw'

export const REACT_RUNTIME: Record<string, string> = {
  react,
  'react/jsx-runtime': jsxRuntime,
  'react/jsx-dev-runtime': jsxRuntime,
  'react-dom': reactDom,
  'react-dom/client': reactDomClient,
  scheduler,
}

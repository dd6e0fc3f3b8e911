/// <reference types="vitest/config" />
import { defineConfig } from 'vite'
import react from '@vitejs/plugin-react'

// Built into the Python package, which serves it at /ui/ (src/relaygate/api/ui.py).
export default defineConfig({
  plugins: [react()],
  base: '/ui/',
  build: {
    outDir: '../src/relaygate/ui/site',
    emptyOutDir: true,
    assetsDir: 'assets',
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    proxy: Object.fromEntries(
      ['/v1', '/admin', '/usage', '/api', '/ai', '/health'].map((p) => [
        p,
        process.env.RELAYGATE_URL ?? 'http://127.0.0.1:8000',
      ]),
    ),
  },
  test: {
    include: ['src/**/*.test.ts', 'src/**/*.test.tsx'],
    environment: 'node',
  },
})

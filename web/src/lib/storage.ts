/** What the UI keeps in the browser's local storage: the key (seed 000 does the same)
 * and the playground's conversations. Nothing else, and nothing is sent anywhere but
 * this gateway. */

export interface StorageLike {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
  removeItem(key: string): void
}

export const KEY_ITEM = 'relaygate.key'
export const CONVERSATIONS_ITEM = 'relaygate.conversations'

export function loadKey(storage: StorageLike): string | null {
  const value = storage.getItem(KEY_ITEM)
  return value && value.trim() ? value : null
}

export function saveKey(storage: StorageLike, key: string): void {
  storage.setItem(KEY_ITEM, key.trim())
}

/** One click: the key and every conversation are gone from this browser. */
export function forgetAll(storage: StorageLike): void {
  storage.removeItem(KEY_ITEM)
  storage.removeItem(CONVERSATIONS_ITEM)
}

export function loadJson<T>(
  storage: StorageLike,
  item: string,
  fallback: T,
  valid: (v: unknown) => v is T,
): T {
  const raw = storage.getItem(item)
  if (!raw) return fallback
  try {
    const value: unknown = JSON.parse(raw)
    return valid(value) ? value : fallback
  } catch {
    return fallback
  }
}

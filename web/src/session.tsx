/** The signed-in key, its role and the API base, shared by every page. */

import { createContext, useContext } from 'react'
import type { Role, Session } from './api/client'

export interface SignedIn extends Session {
  role: Role
  signOut: () => void
  /** The gateway refused the key (401): back to sign-in, saying why. */
  refused: (message: string) => void
}

export const SessionContext = createContext<SignedIn | null>(null)

export function useSession(): SignedIn {
  const session = useContext(SessionContext)
  if (!session) throw new Error('useSession outside a signed-in page')
  return session
}

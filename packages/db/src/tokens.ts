import { createHash, randomBytes } from 'node:crypto';

/** A new host token: 'bb_' + 32 random bytes in base64url (43 characters). Shown once, stored only hashed. */
export function generateToken(): string {
  return `bb_${randomBytes(32).toString('base64url')}`;
}

/**
 * sha256 of the token. Tokens carry 256 random bits, so a slow password hash would add nothing but
 * latency, and a deterministic hash keeps the lookup a unique-index probe.
 */
export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

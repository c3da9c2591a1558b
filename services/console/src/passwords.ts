// Operator passwords, hashed with scrypt (node:crypto): memory-hard, so a stolen users table is expensive to
// attack. Tokens are not hashed this way (see @banbus/db tokens.ts): they are 256 random bits already.
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

// N = 2^15, r = 8: 32 MiB and ~50-100 ms per hash on a small server — slow for an attacker, fine for a login.
const COST_LOG2 = 15;
const BLOCK_SIZE = 8;
const PARALLEL = 1;
const KEY_LENGTH = 32;
const SALT_LENGTH = 16;
/** Shortest password accepted; longer is better, but a rule beyond length mostly produces "Password1!". */
export const MIN_PASSWORD_LENGTH = 10;
/** scrypt reads the whole password; a megabyte of "password" would only be a way to burn CPU. */
export const MAX_PASSWORD_LENGTH = 1024;

function derive(password: string, salt: Buffer, options: ScryptOptions, keyLength: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFKC'), salt, keyLength, options, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

function optionsFor(logN: number, r: number, p: number): ScryptOptions {
  // Node refuses by default above 32 MiB; allow what these parameters need plus headroom.
  return { N: 2 ** logN, r, p, maxmem: 128 * 2 ** logN * r * p * 2 };
}

/** `scrypt$logN$r$p$salt$key` with salt and key in base64url. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(SALT_LENGTH);
  const key = await derive(password, salt, optionsFor(COST_LOG2, BLOCK_SIZE, PARALLEL), KEY_LENGTH);
  return [
    'scrypt',
    COST_LOG2,
    BLOCK_SIZE,
    PARALLEL,
    salt.toString('base64url'),
    key.toString('base64url'),
  ].join('$');
}

/** True when `password` matches `stored`; false for a wrong password or a hash this code cannot read. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [logN, r, p] = parts.slice(1, 4).map(Number) as [number, number, number];
  if (![logN, r, p].every((n) => Number.isInteger(n) && n > 0) || logN > 20 || r > 32 || p > 16) return false;
  const salt = Buffer.from(parts[4]!, 'base64url');
  const expected = Buffer.from(parts[5]!, 'base64url');
  if (expected.length < 16) return false;
  const key = await derive(password, salt, optionsFor(logN, r, p), expected.length);
  return timingSafeEqual(key, expected);
}

// Checked against when the user does not exist, so that "no such user" costs the same time as "wrong
// password" and the login's timing does not tell which user names exist.
let dummy: Promise<string> | undefined;
export function dummyHash(): Promise<string> {
  dummy ??= hashPassword(randomBytes(16).toString('hex'));
  return dummy;
}

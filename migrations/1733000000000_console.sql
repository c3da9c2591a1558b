-- Up Migration

-- Operators who log in to the console with a password. Hosts whose token has the admin (or read) scope
-- log in with the token instead.
CREATE TABLE console_users (
  name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
  -- scrypt$N$r$p$salt$key (salt and key base64url), from node:crypto's scrypt
  password_hash text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_login_at timestamptz
);

-- Console logins. The cookie holds a random id; only its sha256 is stored, so a copy of this table opens
-- no session. A session ends with its user or host: removing the user deletes it, and revoking the host
-- is checked on every request (the host's scopes are read there too, so a scope change applies at once).
CREATE TABLE console_sessions (
  id_hash bytea PRIMARY KEY,
  actor text NOT NULL,
  user_name text REFERENCES console_users (name) ON DELETE CASCADE,
  host_id bigint REFERENCES hosts (id) ON DELETE CASCADE,
  -- the synchronizer token every change made with this session must carry (X-CSRF-Token)
  csrf text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  CHECK ((user_name IS NULL) <> (host_id IS NULL))
);
CREATE INDEX console_sessions_expires_at_idx ON console_sessions (expires_at);

-- Who changed what, from the console, its API or the CLI. Append-only; newest first by id.
CREATE TABLE audit_log (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  actor text NOT NULL,
  action text NOT NULL,
  target text,
  detail jsonb NOT NULL DEFAULT '{}',
  -- the client's address, when the change came over HTTP
  client text
);

-- The last status of every applier that reports in (read by the console from CONSOLE_APPLIERS, or pushed
-- to POST /v1/admin/appliers/heartbeat): how far it applied the decision stream. Lag in seqs is computed against decision_seq when shown.
CREATE TABLE applier_status (
  applier text PRIMARY KEY,
  seq bigint NOT NULL,
  backend text,
  entries bigint,
  ready boolean,
  -- seconds the applier says it has been behind the newest seq it saw
  lag_seconds double precision,
  -- the host whose token sent the heartbeat
  reported_by text NOT NULL,
  first_seen timestamptz NOT NULL DEFAULT now(),
  reported_at timestamptz NOT NULL DEFAULT now()
);

-- The console lists decisions newest first and pages with a keyset on (last_seen, target): the next page
-- starts where the last one ended, a single index range scan however deep it is (OFFSET would read and
-- drop every row before it). Sorting by target uses the primary key.
CREATE INDEX decisions_last_seen_idx ON decisions (last_seen, target);
-- Origins other than fail2ban (manual, 3cx, import) are a small part of the decisions: filtering on one
-- of them walks this small index instead of the whole list. Only those rows pay its insert cost.
CREATE INDEX decisions_origin_last_seen_idx ON decisions (origin, last_seen, target)
  WHERE origin <> 'fail2ban';

-- Down Migration
DROP INDEX decisions_origin_last_seen_idx;
DROP INDEX decisions_last_seen_idx;
DROP TABLE applier_status;
DROP TABLE audit_log;
DROP TABLE console_sessions;
DROP TABLE console_users;

-- Up Migration

-- A host is anything that holds a token: a fail2ban server, the 3CX importer, an operator.
CREATE TABLE hosts (
  id bigserial PRIMARY KEY,
  name text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
  -- sha256 of the token: tokens are 256-bit random values, so a fast hash is enough and lookups stay O(1).
  token_hash bytea NOT NULL UNIQUE,
  scopes text[] NOT NULL DEFAULT '{report}' CHECK (scopes <@ ARRAY['report', 'read', 'admin']),
  created_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz,
  revoked_at timestamptz
);

-- Every report ever accepted: the history behind each decision. The id is the idempotency key.
CREATE TABLE reports (
  id uuid PRIMARY KEY,
  action text NOT NULL CHECK (action IN ('ban', 'unban')),
  target cidr NOT NULL,
  host text NOT NULL,
  origin text NOT NULL CHECK (origin IN ('fail2ban', '3cx', 'manual', 'import')),
  jail text,
  reason text,
  bantime integer,
  failures integer,
  matches text,
  reported_at timestamptz NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  -- what the persister did with it: banned, extended, unbanned, noop, allowlisted, too-broad
  outcome text
);
CREATE INDEX reports_target_idx ON reports (target);
-- Reports arrive in received_at order, so a BRIN index serves time ranges (retention, history by date) at a
-- fraction of a btree's cost on every insert.
CREATE INDEX reports_received_at_idx ON reports USING brin (received_at);

-- One row per (target, host, jail) ban currently in force; a decision lives while it has at least one.
CREATE TABLE active_bans (
  target cidr NOT NULL,
  host text NOT NULL,
  jail text NOT NULL DEFAULT '',
  origin text NOT NULL,
  report_id uuid NOT NULL,
  banned_at timestamptz NOT NULL,
  expires_at timestamptz,
  PRIMARY KEY (target, host, jail)
);
CREATE INDEX active_bans_expires_at_idx ON active_bans (expires_at) WHERE expires_at IS NOT NULL;

-- What the fleet enforces: one row per banned target.
CREATE TABLE decisions (
  target cidr PRIMARY KEY,
  origin text NOT NULL,
  first_seen timestamptz NOT NULL,
  last_seen timestamptz NOT NULL,
  expires_at timestamptz,
  reporters integer NOT NULL,
  ban_count integer NOT NULL,
  reason text
);
-- Containment and overlap (`target <<= X`, `>>=`, `&&`) for the allowlist lift and later readers. SP-GiST
-- supports the same inet operators as GiST and costs about half as much per insert. Lookups by target use
-- the primary key; the sweeper finds expiries in active_bans, so decisions needs no expires_at index.
CREATE INDEX decisions_target_idx ON decisions USING spgist (target inet_ops);

-- The single counter behind seq. Its row lock is also the lock every decision change takes, which is
-- what makes seqs gap-free and commit order equal to seq order across any number of persisters.
CREATE TABLE decision_seq (
  id smallint PRIMARY KEY CHECK (id = 1),
  last bigint NOT NULL
);
INSERT INTO decision_seq (id, last) VALUES (1, 0);

-- The outbox: every decision change, in seq order.
CREATE TABLE decision_log (
  seq bigint PRIMARY KEY,
  op text NOT NULL CHECK (op IN ('add', 'del')),
  target cidr NOT NULL,
  expires_at timestamptz,
  reason text,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- How far the outbox relay got: every seq up to published_seq was confirmed by the broker. Seqs are
-- gap-free and commit in order, so one cursor replaces a per-row "published" flag (and its second write
-- of every log row). The row lock on it is also the relay's lock: one relay at a time.
CREATE TABLE decision_relay (
  id smallint PRIMARY KEY CHECK (id = 1),
  published_seq bigint NOT NULL
);
INSERT INTO decision_relay (id, published_seq) VALUES (1, 0);

-- Repeat offenders, kept after their decisions expire so that bantime escalation has a memory.
CREATE TABLE offenders (
  target cidr PRIMARY KEY,
  ban_count integer NOT NULL,
  last_banned_at timestamptz NOT NULL
);

-- Networks that are never banned.
CREATE TABLE allowlist (
  id bigserial PRIMARY KEY,
  network cidr NOT NULL UNIQUE,
  comment text,
  created_by text,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz
);
CREATE INDEX allowlist_network_gist ON allowlist USING gist (network inet_ops);

-- Down Migration
DROP TABLE allowlist;
DROP TABLE offenders;
DROP TABLE decision_relay;
DROP TABLE decision_log;
DROP TABLE decision_seq;
DROP TABLE decisions;
DROP TABLE active_bans;
DROP TABLE reports;
DROP TABLE hosts;

-- The tables the web app and the pipeline share (the contract's "Database"), created if the
-- app has not created them yet, plus what the pipeline needs for itself. Every column the
-- pipeline adds has a default, so the app can insert rows naming only the contract's columns.

CREATE TABLE IF NOT EXISTS users (
    id      text PRIMARY KEY,
    credits integer NOT NULL DEFAULT 0
);

-- The last event sequence number issued to this user. Taken under the user's row lock, in
-- the same transaction as the change it numbers: gapless, in commit order.
ALTER TABLE users ADD COLUMN IF NOT EXISTS event_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS generations (
    id            text PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users,
    job_id        text UNIQUE,
    prompt        text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'PENDING',
    credits_used  integer NOT NULL DEFAULT 0,
    image_urls    text[] NOT NULL DEFAULT '{}',
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);

CREATE TABLE IF NOT EXISTS ai_models (
    id            text PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users,
    job_id        text UNIQUE,
    name          text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'PENDING',
    credits_used  integer NOT NULL DEFAULT 0,
    model_version text,
    weights_url   text,
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);

CREATE TABLE IF NOT EXISTS credit_transactions (
    id         bigserial PRIMARY KEY,
    user_id    text NOT NULL REFERENCES users,
    amount     integer NOT NULL,
    kind       text NOT NULL,
    job_id     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, kind)
);

-- Per-user event log and outbox: every status change, numbered by user, stored in the
-- transaction that made it and published to `jobs.events` after commit. `published_at`
-- stays null until the broker confirmed it; a sweep publishes any left behind.
CREATE TABLE IF NOT EXISTS job_events (
    user_id      text NOT NULL REFERENCES users,
    seq          bigint NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    PRIMARY KEY (user_id, seq)
);

CREATE INDEX IF NOT EXISTS job_events_unpublished
    ON job_events (created_at) WHERE published_at IS NULL;

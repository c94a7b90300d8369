-- A user's jobs are listed newest first (`GET /api/jobs`): an index lookup whatever the
-- size of the tables, never a scan of other users' rows.
CREATE INDEX IF NOT EXISTS generations_by_user_newest
    ON generations (user_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS ai_models_by_user_newest
    ON ai_models (user_id, created_at DESC, id DESC);

-- Jobs Replicate's API answered 404 for while they were unfinished here. A 404 is not an
-- outcome (a wrong API URL, a proxy or another account's token give one too), so such a
-- job is left for an operator instead of being failed and refunded; this says since when.
CREATE TABLE IF NOT EXISTS unconfirmed_jobs (
    job_id     text PRIMARY KEY,
    first_at   timestamptz NOT NULL DEFAULT now(),
    last_at    timestamptz NOT NULL DEFAULT now(),
    answers    integer NOT NULL DEFAULT 1
);

-- The operator console's record. Both tables are the pipeline's own; the app never writes
-- them.

-- Every time a worker handled a webhook: what arrived, what became of it, how long it took.
-- Written in batches after the fact (never inside the transaction that applies the
-- webhook, so the record costs the webhook path one channel send), and pruned after
-- WEBHOOK_RECORD_RETENTION_HOURS.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    webhook_id   text NOT NULL,
    -- The body's `id`: Replicate's prediction or training id.
    replicate_id text,
    -- generations.id or ai_models.id, once the job was found.
    job_row_id   text,
    -- generation, upscale or training, once the job was found.
    kind         text,
    -- The Replicate status the webhook carried.
    status       text,
    -- applied, progress, duplicate, stale, ignored, retried, dead_lettered.
    outcome      text NOT NULL,
    -- The move made (`PENDING → PROCESSING`), or the error with its causes.
    detail       text NOT NULL DEFAULT '',
    -- 1 for the first delivery, then one more per retry.
    attempt      integer NOT NULL DEFAULT 1,
    -- How often an operator sent it back from the dead letters.
    replays      integer NOT NULL DEFAULT 0,
    duration_ms  real NOT NULL DEFAULT 0,
    -- On a first delivery: from the webhook's timestamp (when it was sent) to the moment a
    -- worker took it, i.e. how long it waited in the queue.
    waited_ms    real
);
CREATE INDEX IF NOT EXISTS webhook_attempts_newest ON webhook_attempts (at DESC, id DESC);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_replicate_id ON webhook_attempts (replicate_id);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_job ON webhook_attempts (job_row_id);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_webhook_id ON webhook_attempts (webhook_id);

-- What operators did from the console: who moved what, when, with what result. A refund
-- made here is also a `credit_transactions` row like any other.
CREATE TABLE IF NOT EXISTS operator_actions (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    -- fail_and_refund, ask_replicate, replay_dead_letters.
    action     text NOT NULL,
    -- The job's row id, when the action was about one job.
    job_row_id text,
    detail     text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS operator_actions_by_job ON operator_actions (job_row_id);

-- Unfinished jobs by age: the console's stuck jobs and the reconciler's look-ups read only
-- these, whatever the size of the finished history.
CREATE INDEX IF NOT EXISTS generations_unfinished
    ON generations (updated_at) WHERE status IN ('PENDING', 'PROCESSING');
CREATE INDEX IF NOT EXISTS ai_models_unfinished
    ON ai_models (updated_at) WHERE status IN ('PENDING', 'PROCESSING');

-- Recent creations, across users (the console's "creations failing").
CREATE INDEX IF NOT EXISTS generations_by_created_at ON generations (created_at);

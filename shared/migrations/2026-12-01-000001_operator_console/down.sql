DROP INDEX IF EXISTS generations_by_created_at;
DROP INDEX IF EXISTS generations_unfinished;
DROP INDEX IF EXISTS ai_models_unfinished;
DROP TABLE IF EXISTS operator_actions;
DROP TABLE IF EXISTS webhook_attempts;

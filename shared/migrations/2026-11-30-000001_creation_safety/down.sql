DROP TABLE IF EXISTS unconfirmed_jobs;
DROP INDEX IF EXISTS ai_models_by_user_newest;
DROP INDEX IF EXISTS generations_by_user_newest;

ALTER TABLE ai_models DROP COLUMN IF EXISTS cancel_requested_at;
ALTER TABLE generations DROP COLUMN IF EXISTS cancel_requested_at;
ALTER TABLE generations DROP COLUMN IF EXISTS thumb_urls;
ALTER TABLE generations DROP COLUMN IF EXISTS source_id;
ALTER TABLE generations DROP COLUMN IF EXISTS model_name;
ALTER TABLE generations DROP COLUMN IF EXISTS model_id;

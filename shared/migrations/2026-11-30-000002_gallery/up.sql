-- What the gallery needs beyond the application's columns; every column nullable or
-- defaulted, so the web app's own writes are unaffected.

-- The trained model a generation runs on (ai_models.id; null: the default model).
ALTER TABLE generations ADD COLUMN IF NOT EXISTS model_id TEXT;
-- Its name when the generation was asked for (shown on the card without a join).
ALTER TABLE generations ADD COLUMN IF NOT EXISTS model_name TEXT;
-- The generation an upscale enlarges.
ALTER TABLE generations ADD COLUMN IF NOT EXISTS source_id TEXT;
-- A small rendition of each image, in the order of image_urls.
ALTER TABLE generations ADD COLUMN IF NOT EXISTS thumb_urls TEXT[] NOT NULL DEFAULT '{}';
-- The person asked to cancel before Replicate's id was known: cancelled once it is.
ALTER TABLE generations ADD COLUMN IF NOT EXISTS cancel_requested_at TIMESTAMPTZ;
ALTER TABLE ai_models ADD COLUMN IF NOT EXISTS cancel_requested_at TIMESTAMPTZ;

-- When Hadron first recorded each request (the dashboard's "age"). Set on
-- insert only; rows from before take their last update as the best guess.
ALTER TABLE requests ADD COLUMN created_at BIGINT;
UPDATE requests SET created_at = updated_at WHERE created_at IS NULL;

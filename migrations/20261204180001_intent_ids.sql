-- One intent per bucket change, not per key: several changes of one key (an orphan's quarantine
-- and an abandoned upload's abort, two uploads at one key) can be under way at once, and each
-- must be settled on its own. An intent noted before this migration keeps its key as its id.
ALTER TABLE reconciler.intents ADD COLUMN id text;
UPDATE reconciler.intents SET id = key;
ALTER TABLE reconciler.intents ALTER COLUMN id SET NOT NULL;
ALTER TABLE reconciler.intents DROP CONSTRAINT intents_pkey;
ALTER TABLE reconciler.intents ADD PRIMARY KEY (scope, id);

-- Bucket changes about to be made (a quarantine's move, a delete). The bucket cannot roll back
-- with the transaction that audits its change, so an action notes its intent first, committed on
-- its own, and clears it in the transaction that writes the audit row. An intent still here names
-- a change whose audit row may be missing (its process died between the bucket call and that
-- commit); the next applying sweep looks at the bucket and settles it. `intent` holds the object,
-- the quarantine key and the audit row, as JSON.
CREATE TABLE reconciler.intents (
    scope      text NOT NULL,
    key        text NOT NULL,
    intent     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

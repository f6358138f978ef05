-- The newest S3 event applied per key: its sequencer decides whether a later-delivered event is
-- really newer. Written in the same transaction as the event's effect.
CREATE TABLE reconciler.key_events (
    key        text PRIMARY KEY,
    sequencer  text,
    kind       text,
    event_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

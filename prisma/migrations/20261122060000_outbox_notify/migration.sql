-- Wakes the outbox dispatcher when an operation is recorded: every insert into the outbox
-- notifies channel memplane_outbox when its transaction commits (Postgres folds identical
-- notifications of one transaction into one). Dispatchers LISTEN on it and still read the
-- outbox on a slow timer, so a notification lost with a connection only costs latency.
CREATE OR REPLACE FUNCTION "memplane_outbox_notify"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('memplane_outbox', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER "outbox_notify" AFTER INSERT ON "outbox" FOR EACH STATEMENT EXECUTE FUNCTION "memplane_outbox_notify"();

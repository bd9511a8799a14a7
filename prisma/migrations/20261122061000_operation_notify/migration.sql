-- Tells watchers (REST server-sent events, gRPC WatchOperation) at once when an operation
-- changes state: channel memplane_operation, payload the operation id, sent when the
-- transaction commits. Only state changes notify (not each recorded step): watchers still
-- re-read on their interval for progress, and miss nothing if a notification is lost.
CREATE OR REPLACE FUNCTION "memplane_operation_notify"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('memplane_operation', NEW.id::text);
  RETURN NULL;
END
$$;

CREATE TRIGGER "operation_state_notify" AFTER UPDATE OF "state" ON "operations"
  FOR EACH ROW WHEN (OLD."state" IS DISTINCT FROM NEW."state") EXECUTE FUNCTION "memplane_operation_notify"();

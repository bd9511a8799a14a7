-- Wakes the outbox dispatcher when an operation is recorded: every row inserted into the
-- outbox notifies channel memplane_outbox when its transaction commits, with the row id, the
-- operation id and its VM id as payload ("<outbox id> <operation id> <vm id>"), so the
-- dispatcher can queue it without reading the outbox first. Dispatchers LISTEN on it and
-- still read the outbox on a slow timer, so a notification lost with a connection only costs
-- latency.
CREATE OR REPLACE FUNCTION "memplane_outbox_notify"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.topic = 'operations' THEN
    PERFORM pg_notify('memplane_outbox', concat_ws(' ', NEW.id, o.id, o.vm_id)) FROM operations o WHERE o.id = NEW.key::uuid;
  ELSE
    PERFORM pg_notify('memplane_outbox', NEW.id::text);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER "outbox_notify" AFTER INSERT ON "outbox" FOR EACH ROW EXECUTE FUNCTION "memplane_outbox_notify"();

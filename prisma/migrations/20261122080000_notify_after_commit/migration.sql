-- Change hints (memplane_operation, memplane_outbox) are now sent by the application
-- after the transaction that made the change commits, all of a moment's together in one
-- statement of their own (PgHints), instead of by triggers inside that transaction.
-- A transaction that sends NOTIFY holds a database-wide lock from its COMMIT until its
-- commit record is on disk, so every transaction that changed an operation's state or
-- recorded one committed alone, each after the other's WAL flush: under bench:ops the
-- worker's backends spent about 40 % of their time waiting for that lock
-- (pg_stat_activity: Lock/object). Channels and payloads are unchanged.
DROP TRIGGER "operation_state_notify" ON "operations";
DROP FUNCTION "memplane_operation_notify"();
DROP TRIGGER "outbox_notify" ON "outbox";
DROP FUNCTION "memplane_outbox_notify"();

-- The items of an engine end-and-claim statement (EngineRepository.endAndClaimMany), with
-- the row estimate they really have. Read straight from jsonb_to_recordset they are
-- estimated at 100 rows, so the statement's generic plan (it is planned once per
-- connection) joined them by hash against whole tables: a sequential scan of every memory
-- group and every active operation per statement, growing with the fleet (auto_explain
-- on bench:ops: 0.35 ms each for 2,048 groups). A batch holds one item per VM loop that
-- met it, at most 32 and typically about 4, so 8 is the estimate: the plan looks each item's
-- rows up by key. plpgsql, so that the planner keeps the estimate (a SQL function would be
-- inlined and estimated as jsonb_to_recordset again).
CREATE FUNCTION "memplane_engine_items"(p jsonb)
RETURNS TABLE (n int, vm_id uuid, known_key text, op_id uuid, op_state text, error jsonb, steps jsonb, progress_percent int, group_id uuid,
  group_state text, plugged_bytes bigint, online_blocks int, online_zones jsonb, devices_full boolean, devices_put jsonb, devices_drop jsonb,
  claim_next boolean)
LANGUAGE plpgsql IMMUTABLE STRICT ROWS 8 AS $$
BEGIN
  RETURN QUERY SELECT * FROM jsonb_to_recordset(p) AS i(n int, vm_id uuid, known_key text, op_id uuid, op_state text, error jsonb, steps jsonb,
    progress_percent int, group_id uuid, group_state text, plugged_bytes bigint, online_blocks int, online_zones jsonb, devices_full boolean,
    devices_put jsonb, devices_drop jsonb, claim_next boolean);
END
$$;

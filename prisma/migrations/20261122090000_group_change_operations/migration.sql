-- A memory-group change to a running VM records its operation (and the operation's outbox
-- message) in the batch's closing statement too, instead of in two statements of its own
-- run while the batch holds its locks: p.changes[].insertOperation = {id, vmId, vm, groupId,
-- groupName, kind, steps, rollback, requestId?, principal, topic}, written after the
-- change's group row. Returns the operations recorded, [{operation, vmId, outbox}], so the
-- API can wake the outbox dispatchers once the batch commits.
DROP FUNCTION "memplane_close_group_changes"(jsonb);

CREATE FUNCTION "memplane_close_group_changes"(p jsonb) RETURNS json
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  w jsonb;
  a jsonb;
  c jsonb;
  o jsonb;
  n integer;
  v_outbox bigint;
  v_recorded jsonb := '[]'::jsonb;
BEGIN
  FOR w IN SELECT x FROM jsonb_array_elements(p->'changes') AS x LOOP
    a := w->'audit';
    INSERT INTO audit_log (principal, role, method, resource, request_id, transport, details)
      VALUES (a->>'principal', a->>'role', a->>'method', a->>'resource', a->>'requestId', a->>'transport', coalesce(a->'details', '{}'::jsonb));
    IF w ? 'answer' THEN
      INSERT INTO idempotency_records (principal, method, request_id, fingerprint, response)
        VALUES (w->'answer'->>'principal', w->'answer'->>'method', w->'answer'->>'requestId', w->'answer'->>'fingerprint', w->'answer'->'response');
    END IF;
    IF w ? 'insertGroup' THEN
      INSERT INTO memory_groups (id, vm_id, name, pool_id, kind, size_bytes, max_size_bytes, block_size_bytes, requested_bytes, online_type,
          guest_node_id, hotplugged, held_bytes, created_at, updated_at)
        SELECT r.id, r.vm_id, r.name, r.pool_id, r.kind, r.size_bytes, r.max_size_bytes, r.block_size_bytes, r.requested_bytes, r.online_type,
          r.guest_node_id, r.hotplugged, r.held_bytes, r.created_at, r.created_at
        FROM jsonb_populate_record(NULL::memory_groups, w->'insertGroup') r;
    END IF;
    IF w ? 'updateGroup' THEN
      UPDATE memory_groups g SET
          requested_bytes = coalesce((u.x->>'requested_bytes')::bigint, g.requested_bytes),
          desired_state = coalesce((u.x->>'desired_state')::"GroupDesiredState", g.desired_state),
          state = coalesce((u.x->>'state')::"GroupObservedState", g.state),
          held_bytes = coalesce((u.x->>'held_bytes')::bigint, g.held_bytes),
          version = g.version + 1,
          updated_at = (u.x->>'updated_at')::timestamptz
        FROM (SELECT w->'updateGroup' AS x) u
        WHERE g.id = (u.x->>'id')::uuid;
    END IF;
    c := w->'ledger';
    IF c IS NOT NULL THEN
      DELETE FROM pool_extents e
        USING jsonb_to_recordset(c->'removed') AS r(o bigint, s bigint)
        WHERE e.pool_id = (c->>'poolId')::uuid AND e.group_id = (c->>'groupId')::uuid AND e.offset_bytes = r.o AND e.size_bytes = r.s;
      GET DIAGNOSTICS n = ROW_COUNT;
      IF n <> jsonb_array_length(c->'removed') THEN
        RAISE EXCEPTION 'pool %: expected to remove % extents of group %, found %', c->>'poolId', jsonb_array_length(c->'removed'), c->>'groupId', n
          USING ERRCODE = 'MPL01';
      END IF;
      INSERT INTO pool_extents (pool_id, group_id, offset_bytes, size_bytes)
        SELECT (c->>'poolId')::uuid, (c->>'groupId')::uuid, r.o, r.s FROM jsonb_to_recordset(c->'added') AS r(o bigint, s bigint);
      UPDATE pools SET allocated_bytes = allocated_bytes + (c->>'deltaBytes')::bigint WHERE id = (c->>'poolId')::uuid;
    END IF;
    o := w->'insertOperation';
    IF o IS NOT NULL THEN
      INSERT INTO operations (id, vm_id, group_id, group_name, kind, steps, rollback, request_id, principal)
        VALUES ((o->>'id')::uuid, (o->>'vmId')::uuid, (o->>'groupId')::uuid, o->>'groupName', (o->>'kind')::"OperationKind",
          o->'steps', o->'rollback', o->>'requestId', o->>'principal');
      INSERT INTO outbox (topic, key, payload)
        VALUES (o->>'topic', o->>'id', jsonb_build_object('v', 1, 'operation', o->>'id', 'vm', o->>'vm', 'kind', o->>'kind', 'memoryGroup', o->>'groupName'))
        RETURNING id INTO v_outbox;
      v_recorded := v_recorded || jsonb_build_object('operation', o->>'id', 'vmId', o->>'vmId', 'outbox', v_outbox);
    END IF;
    IF w ? 'deleteGroup' THEN
      DELETE FROM memory_groups WHERE id = (w->>'deleteGroup')::uuid;
    END IF;
  END LOOP;
  RETURN v_recorded::json;
END
$$;

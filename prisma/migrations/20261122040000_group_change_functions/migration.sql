-- Memory-group changes (create, resize, delete) in two round trips per batch
-- instead of seven or eight per change: the API sends
-- `BEGIN; SELECT memplane_open_group_changes(…)` as one message and
-- `SELECT memplane_close_group_changes(…); COMMIT` as another, and runs the pure
-- rules and allocator in between, for every change of the batch. Every round
-- trip, and every commit, costs the API and Postgres more CPU than the
-- statements themselves (bench:ledger).

-- p.items: [{vm, group, pool?, principal?, method?, requestId?}]. For each item,
-- the earlier answer to its request id, if any; then, for the items without
-- one, locks their VMs (by name, in order) and then their pools (by id, in
-- order), and reads everything after the locks are granted: VMs with their
-- groups (memplane_lock_vm), pools with their facts and ledgers
-- (memplane_lock_pool_ledger). An item's pool is the one it names, or else the
-- pool of its VM's group. VMs before pools, each in order, as everywhere.
CREATE FUNCTION "memplane_open_group_changes"(p jsonb) RETURNS json
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_answers json;
  v_vms jsonb := '{}'::jsonb;
  v_pools jsonb := '{}'::jsonb;
  v_pool_of jsonb := '[]'::jsonb;
  v_name text;
  v_vm json;
  v_item jsonb;
  v_pool uuid;
  v_pool_ids uuid[] := '{}';
BEGIN
  SELECT json_agg((SELECT json_build_object('fingerprint', i.fingerprint, 'response', i.response)
      FROM idempotency_records i
      WHERE i.principal = x.item->>'principal' AND i.method = x.item->>'method' AND i.request_id = x.item->>'requestId') ORDER BY x.n)
    INTO v_answers
    FROM jsonb_array_elements(p->'items') WITH ORDINALITY AS x(item, n);
  FOR v_name IN
    SELECT DISTINCT x.item->>'vm' FROM jsonb_array_elements(p->'items') WITH ORDINALITY AS x(item, n)
    WHERE v_answers->(x.n::int - 1) IS NULL OR json_typeof(v_answers->(x.n::int - 1)) = 'null'
    ORDER BY 1
  LOOP
    v_vm := memplane_lock_vm(v_name);
    IF v_vm IS NOT NULL THEN
      v_vms := v_vms || jsonb_build_object(v_name, v_vm::jsonb);
    END IF;
  END LOOP;
  FOR v_item IN SELECT x.item FROM jsonb_array_elements(p->'items') AS x(item) LOOP
    v_pool := NULL;
    IF v_vms ? (v_item->>'vm') THEN
      IF v_item ? 'pool' THEN
        SELECT id INTO v_pool FROM pools WHERE name = v_item->>'pool';
      ELSE
        SELECT g.pool_id INTO v_pool FROM memory_groups g
          WHERE g.vm_id = (v_vms->(v_item->>'vm')->'vm'->>'id')::uuid AND g.name = v_item->>'group';
      END IF;
    END IF;
    v_pool_of := v_pool_of || jsonb_build_array(v_pool);
    IF v_pool IS NOT NULL THEN
      v_pool_ids := v_pool_ids || v_pool;
    END IF;
  END LOOP;
  FOR v_pool IN SELECT DISTINCT u FROM unnest(v_pool_ids) AS u ORDER BY 1 LOOP
    v_pools := v_pools || jsonb_build_object(v_pool::text, jsonb_build_object(
      'ledger', memplane_lock_pool_ledger(v_pool)::jsonb,
      'facts', (SELECT to_jsonb(x) FROM (
        SELECT pl.id, pl.name, h.name AS host, pl.host_node_id, pl.state::text AS state, pl.memory_type::text AS memory_type, pl.cpu_addressable,
          pl.dax_device_path, pl.capacity_bytes, pl.granule_bytes
        FROM pools pl JOIN hosts h ON h.id = pl.host_id WHERE pl.id = v_pool) x)));
  END LOOP;
  RETURN json_build_object('answers', v_answers, 'vms', v_vms, 'pools', v_pools, 'poolOf', v_pool_of);
END
$$;

-- p.changes: what the caller decided under those locks, applied in order. Each
-- change writes: its audit record, its answer record, a new group, a group
-- update, one allocator change (the extents it removes must be the table's
-- exactly, else nothing of the batch is written), a group deletion. The
-- group's held_bytes travels with the new group or the update (or the group
-- goes). Fails with SQLSTATE MPL01 on a misread ledger, so the COMMIT sent
-- with it never runs.
CREATE FUNCTION "memplane_close_group_changes"(p jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  w jsonb;
  a jsonb;
  c jsonb;
  n integer;
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
    IF w ? 'deleteGroup' THEN
      DELETE FROM memory_groups WHERE id = (w->>'deleteGroup')::uuid;
    END IF;
  END LOOP;
END
$$;

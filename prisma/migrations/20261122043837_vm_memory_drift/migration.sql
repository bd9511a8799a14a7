-- AlterTable
ALTER TABLE "vms" ADD COLUMN     "memory_drift" JSONB,
ADD COLUMN     "memory_drift_checked_at" TIMESTAMPTZ(3);

-- The VM row memplane_lock_vm returns carries the drift report too, so every view of a VM shows it.
CREATE OR REPLACE FUNCTION "memplane_lock_vm"(p_name text) RETURNS json
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_id uuid;
BEGIN
  SELECT id INTO v_id FROM vms WHERE name = p_name FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  RETURN json_build_object(
    'vm', (
      SELECT row_to_json(x) FROM (
        SELECT v.id, v.name, v.description, v.labels, v.host_id, h.name AS host, h.state::text AS host_state, v.kernel_profile, v.guest_memory,
          v.memory_slots, v.max_memory_bytes, v.spare_pcie_ports, v.state::text AS state, v.version, v.created_at, v.updated_at,
          v.qemu_pid, v.qmp_socket_path, v.qga_socket_path, v.observed_devices, v.observed_at,
          v.memory_drift, v.memory_drift_checked_at,
          (SELECT coalesce(json_agg(json_build_object('guestNodeId', n.guest_node_id, 'vcpus', n.vcpus, 'bootMemoryBytes', n.boot_memory_bytes, 'hostNodeId', n.host_node_id)
             ORDER BY n.guest_node_id), '[]'::json) FROM vm_guest_nodes n WHERE n.vm_id = v.id) AS guest_nodes
        FROM vms v JOIN hosts h ON h.id = v.host_id WHERE v.id = v_id) x),
    'groups', (
      SELECT coalesce(json_agg(row_to_json(x) ORDER BY x.created_at, x.id), '[]'::json) FROM (
        SELECT g.id, g.vm_id, g.name, g.pool_id, p.name AS pool, p.host_node_id AS pool_host_node_id, p.state::text AS pool_state,
          p.memory_type::text AS pool_memory_type, p.cpu_addressable AS pool_cpu_addressable, p.dax_device_path AS pool_dax_device_path,
          p.capacity_bytes AS pool_capacity_bytes, p.granule_bytes AS pool_granule_bytes, g.kind::text AS kind, g.size_bytes, g.max_size_bytes,
          g.block_size_bytes, g.requested_bytes, g.online_type::text AS online_type, g.guest_node_id, g.desired_state::text AS desired_state, g.held_bytes,
          g.hotplugged, g.state::text AS state, g.plugged_bytes, g.online_blocks, g.online_zones, g.version, g.created_at, g.updated_at,
          o.id AS op_id, o.kind::text AS op_kind, o.state::text AS op_state
        FROM memory_groups g JOIN pools p ON p.id = g.pool_id
        LEFT JOIN operations o ON o.group_id = g.id AND o.state IN ('PENDING', 'RUNNING')
        WHERE g.vm_id = v_id) x));
END
$$;

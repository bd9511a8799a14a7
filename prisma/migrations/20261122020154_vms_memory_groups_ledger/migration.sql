-- CreateEnum
CREATE TYPE "VmState" AS ENUM ('DEFINED', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED', 'FAILED');

-- CreateEnum
CREATE TYPE "MemoryGroupKind" AS ENUM ('STATIC', 'DYNAMIC');

-- CreateEnum
CREATE TYPE "GroupOnlineType" AS ENUM ('ONLINE_MOVABLE', 'ONLINE_KERNEL', 'AUTO');

-- CreateEnum
CREATE TYPE "GroupDesiredState" AS ENUM ('PRESENT', 'ABSENT');

-- CreateEnum
CREATE TYPE "GroupObservedState" AS ENUM ('PENDING', 'PLUGGED', 'RESIZING', 'UNPLUGGING', 'FAILED');

-- CreateEnum
CREATE TYPE "OperationKind" AS ENUM ('START', 'STOP', 'PLUG', 'UNPLUG', 'RESIZE');

-- CreateEnum
CREATE TYPE "OperationState" AS ENUM ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED');

-- AlterTable
ALTER TABLE "pools" ADD COLUMN     "cpu_addressable" BOOLEAN NOT NULL DEFAULT true;

-- CreateTable
CREATE TABLE "vms" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "labels" JSONB NOT NULL DEFAULT '{}',
    "host_id" UUID NOT NULL,
    "kernel_profile" TEXT NOT NULL,
    "guest_memory" JSONB NOT NULL DEFAULT '{}',
    "memory_slots" INTEGER NOT NULL,
    "max_memory_bytes" BIGINT NOT NULL,
    "spare_pcie_ports" INTEGER NOT NULL,
    "state" "VmState" NOT NULL DEFAULT 'DEFINED',
    "version" INTEGER NOT NULL DEFAULT 1,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "vms_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "vm_guest_nodes" (
    "vm_id" UUID NOT NULL,
    "guest_node_id" INTEGER NOT NULL,
    "vcpus" INTEGER NOT NULL,
    "boot_memory_bytes" BIGINT NOT NULL,
    "host_node_id" INTEGER,

    CONSTRAINT "vm_guest_nodes_pkey" PRIMARY KEY ("vm_id","guest_node_id")
);

-- CreateTable
CREATE TABLE "memory_groups" (
    "id" UUID NOT NULL,
    "vm_id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "pool_id" UUID NOT NULL,
    "kind" "MemoryGroupKind" NOT NULL,
    "size_bytes" BIGINT NOT NULL DEFAULT 0,
    "max_size_bytes" BIGINT NOT NULL DEFAULT 0,
    "block_size_bytes" BIGINT NOT NULL DEFAULT 0,
    "requested_bytes" BIGINT NOT NULL DEFAULT 0,
    "online_type" "GroupOnlineType" NOT NULL,
    "guest_node_id" INTEGER,
    "desired_state" "GroupDesiredState" NOT NULL DEFAULT 'PRESENT',
    "held_bytes" BIGINT NOT NULL DEFAULT 0,
    "hotplugged" BOOLEAN NOT NULL DEFAULT false,
    "state" "GroupObservedState" NOT NULL DEFAULT 'PENDING',
    "plugged_bytes" BIGINT NOT NULL DEFAULT 0,
    "online_blocks" INTEGER NOT NULL DEFAULT 0,
    "version" INTEGER NOT NULL DEFAULT 1,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "memory_groups_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "pool_extents" (
    "id" BIGSERIAL NOT NULL,
    "pool_id" UUID NOT NULL,
    "group_id" UUID NOT NULL,
    "offset_bytes" BIGINT NOT NULL,
    "size_bytes" BIGINT NOT NULL,

    CONSTRAINT "pool_extents_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "operations" (
    "id" UUID NOT NULL,
    "seq" BIGSERIAL NOT NULL,
    "vm_id" UUID NOT NULL,
    "group_id" UUID,
    "group_name" TEXT,
    "kind" "OperationKind" NOT NULL,
    "state" "OperationState" NOT NULL DEFAULT 'PENDING',
    "steps" JSONB NOT NULL DEFAULT '[]',
    "progress_percent" INTEGER NOT NULL DEFAULT 0,
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "error" JSONB,
    "rollback" JSONB NOT NULL,
    "request_id" TEXT,
    "principal" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "started_at" TIMESTAMPTZ(3),
    "ended_at" TIMESTAMPTZ(3),

    CONSTRAINT "operations_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "outbox" (
    "id" BIGSERIAL NOT NULL,
    "topic" TEXT NOT NULL,
    "key" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "dispatched_at" TIMESTAMPTZ(3),

    CONSTRAINT "outbox_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "vms_name_key" ON "vms"("name");

-- CreateIndex
CREATE INDEX "vms_host_id_idx" ON "vms"("host_id");

-- CreateIndex
CREATE INDEX "memory_groups_pool_id_idx" ON "memory_groups"("pool_id");

-- CreateIndex
CREATE UNIQUE INDEX "memory_groups_vm_id_name_key" ON "memory_groups"("vm_id", "name");

-- CreateIndex
CREATE INDEX "pool_extents_pool_id_idx" ON "pool_extents"("pool_id");

-- CreateIndex
CREATE INDEX "pool_extents_group_id_idx" ON "pool_extents"("group_id");

-- CreateIndex
CREATE UNIQUE INDEX "operations_seq_key" ON "operations"("seq");

-- CreateIndex
CREATE INDEX "operations_vm_id_state_idx" ON "operations"("vm_id", "state");

-- CreateIndex
CREATE INDEX "operations_group_id_state_idx" ON "operations"("group_id", "state");

-- CreateIndex
CREATE INDEX "operations_state_idx" ON "operations"("state");

-- AddForeignKey
ALTER TABLE "vms" ADD CONSTRAINT "vms_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "vm_guest_nodes" ADD CONSTRAINT "vm_guest_nodes_vm_id_fkey" FOREIGN KEY ("vm_id") REFERENCES "vms"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "memory_groups" ADD CONSTRAINT "memory_groups_vm_id_fkey" FOREIGN KEY ("vm_id") REFERENCES "vms"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "memory_groups" ADD CONSTRAINT "memory_groups_pool_id_fkey" FOREIGN KEY ("pool_id") REFERENCES "pools"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "pool_extents" ADD CONSTRAINT "pool_extents_pool_id_fkey" FOREIGN KEY ("pool_id") REFERENCES "pools"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "pool_extents" ADD CONSTRAINT "pool_extents_group_id_fkey" FOREIGN KEY ("group_id") REFERENCES "memory_groups"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "operations" ADD CONSTRAINT "operations_vm_id_fkey" FOREIGN KEY ("vm_id") REFERENCES "vms"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "operations" ADD CONSTRAINT "operations_group_id_fkey" FOREIGN KEY ("group_id") REFERENCES "memory_groups"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- ---------------------------------------------------------------------------
-- Hand-written: what the datamodel cannot say. Postgres is the last arbiter of
-- the ledger, whatever the API replicas do.

-- No two extents of a pool overlap. Deferred to commit, so one transaction may
-- replace a group's extents (delete + insert of the same range) in any order.
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE "pool_extents" ADD CONSTRAINT "pool_extents_no_overlap"
    EXCLUDE USING gist ("pool_id" WITH =, int8range("offset_bytes", "offset_bytes" + "size_bytes") WITH &&)
    DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE "pool_extents" ADD CONSTRAINT "pool_extents_shape" CHECK ("offset_bytes" >= 0 AND "size_bytes" > 0);

-- A pool never hands out more than it has (allocated_bytes = Σ its extents, kept in the same statement).
ALTER TABLE "pools" ADD CONSTRAINT "pools_allocated_within_capacity" CHECK ("allocated_bytes" >= 0 AND "allocated_bytes" <= "capacity_bytes");

ALTER TABLE "memory_groups" ADD CONSTRAINT "memory_groups_sizes" CHECK (
    "held_bytes" >= 0 AND "requested_bytes" >= 0 AND "plugged_bytes" >= 0 AND "online_blocks" >= 0
    AND (("kind" = 'STATIC' AND "size_bytes" > 0) OR ("kind" = 'DYNAMIC' AND "max_size_bytes" > 0 AND "requested_bytes" <= "max_size_bytes"))
);

ALTER TABLE "vms" ADD CONSTRAINT "vms_headroom" CHECK ("memory_slots" BETWEEN 0 AND 256 AND "max_memory_bytes" > 0 AND "spare_pcie_ports" >= 0);

-- At most one PENDING or RUNNING operation per memory group.
CREATE UNIQUE INDEX "operations_one_active_per_group" ON "operations" ("group_id") WHERE "state" IN ('PENDING', 'RUNNING') AND "group_id" IS NOT NULL;

-- The dispatcher reads undispatched messages in order.
CREATE INDEX "outbox_undispatched" ON "outbox" ("id") WHERE "dispatched_at" IS NULL;

-- One round trip for the ledger's hottest step: lock the pool row, then read its
-- extents. Each statement of a VOLATILE function takes a new snapshot under READ
-- COMMITTED, so the extents read after the lock is granted include everything
-- committed before; and the plans of a function are cached per connection.
CREATE FUNCTION "memplane_lock_pool_ledger"(p_pool uuid) RETURNS json
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  p record;
BEGIN
  SELECT state::text AS state, capacity_bytes, granule_bytes INTO p FROM pools WHERE id = p_pool FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  RETURN json_build_object(
    'state', p.state, 'capacityBytes', p.capacity_bytes, 'granuleBytes', p.granule_bytes,
    'extents', (SELECT coalesce(json_agg(json_build_array(e.group_id, e.offset_bytes, e.size_bytes)), '[]'::json) FROM pool_extents e WHERE e.pool_id = p_pool));
END
$$;

-- Likewise for a VM: lock its row, then read it, its guest nodes and its groups
-- (with their pools and active operation) after the lock, in one round trip.
CREATE FUNCTION "memplane_lock_vm"(p_name text) RETURNS json
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
          (SELECT coalesce(json_agg(json_build_object('guestNodeId', n.guest_node_id, 'vcpus', n.vcpus, 'bootMemoryBytes', n.boot_memory_bytes, 'hostNodeId', n.host_node_id)
             ORDER BY n.guest_node_id), '[]'::json) FROM vm_guest_nodes n WHERE n.vm_id = v.id) AS guest_nodes
        FROM vms v JOIN hosts h ON h.id = v.host_id WHERE v.id = v_id) x),
    'groups', (
      SELECT coalesce(json_agg(row_to_json(x) ORDER BY x.created_at, x.id), '[]'::json) FROM (
        SELECT g.id, g.vm_id, g.name, g.pool_id, p.name AS pool, p.host_node_id AS pool_host_node_id, p.state::text AS pool_state,
          p.memory_type::text AS pool_memory_type, p.cpu_addressable AS pool_cpu_addressable, p.dax_device_path AS pool_dax_device_path,
          p.capacity_bytes AS pool_capacity_bytes, p.granule_bytes AS pool_granule_bytes, g.kind::text AS kind, g.size_bytes, g.max_size_bytes,
          g.block_size_bytes, g.requested_bytes, g.online_type::text AS online_type, g.guest_node_id, g.desired_state::text AS desired_state, g.held_bytes,
          g.hotplugged, g.state::text AS state, g.plugged_bytes, g.online_blocks, g.version, g.created_at, g.updated_at,
          o.id AS op_id, o.kind::text AS op_kind, o.state::text AS op_state
        FROM memory_groups g JOIN pools p ON p.id = g.pool_id
        LEFT JOIN operations o ON o.group_id = g.id AND o.state IN ('PENDING', 'RUNNING')
        WHERE g.vm_id = v_id) x));
END
$$;

-- A VM's groups_generation changes whenever one of its groups is added or removed or changes
-- anything the guest topology is compiled from (the desired state, not the observed one), so
-- a worker can tell in one row whether the groups it read before are still current.
-- Pools' placement (host node, memory type, DAX path) never changes after creation.
ALTER TABLE "vms" ADD COLUMN "groups_generation" BIGINT NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION "memplane_groups_generation"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE vms SET groups_generation = groups_generation + 1 WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.vm_id ELSE NEW.vm_id END;
  RETURN NULL;
END
$$;

CREATE TRIGGER "memory_groups_generation"
  AFTER INSERT OR DELETE OR UPDATE OF "vm_id", "name", "pool_id", "kind", "size_bytes", "max_size_bytes", "block_size_bytes", "requested_bytes",
    "online_type", "guest_node_id", "desired_state", "hotplugged", "created_at"
  ON "memory_groups" FOR EACH ROW EXECUTE FUNCTION "memplane_groups_generation"();

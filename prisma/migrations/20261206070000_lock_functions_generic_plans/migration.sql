-- memplane_lock_vm reads a VM with its groups (and their active operations) for every change
-- to the VM's groups and in the engine's own transactions. Under plan_cache_mode=auto each
-- connection plans its statements afresh for their first five calls (custom plans), at about
-- 1.1 ms a plan, more than running them (bench:ops --pg-statements, real-guest part: 1.05 plans
-- per operation, its ~40 calls spread over a few connections), and then keeps a generic plan
-- made from whatever the tables held. Its plans are now generic from the first call, made once
-- per session. Such a plan is kept while the tables grow, so it must not depend on what they held
-- when it was made (a merge join read every active operation of the fleet to find one
-- group's): every statement of the function looks rows up by key, so it plans them as nested
-- lookups, as the engine's end-and-claim connections do (Database.dedicatedSql).
-- engine-store.int-spec checks the plans the function runs (auto_explain), on a few rows and
-- on a fleet.
ALTER FUNCTION "memplane_lock_vm"(text)
  SET plan_cache_mode = force_generic_plan
  SET random_page_cost = 1.1
  SET enable_seqscan = off
  SET enable_hashjoin = off
  SET enable_mergejoin = off
  SET enable_bitmapscan = off;

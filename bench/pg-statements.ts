import { Client } from 'pg';

/** Postgres settings that make pg_stat_statements record every statement, nested ones and planning included. */
export const PG_STATEMENTS_SETTINGS = { shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track': 'all', 'pg_stat_statements.track_planning': 'on' };

/** Resets pg_stat_statements now; the returned function prints what ran since, per `unit` (the count it is given). */
export async function statementsSince(databaseUrl: string, during = 'the drain', unit = 'operation'): Promise<(operations: number) => Promise<string[]>> {
  const db = new Client({ connectionString: databaseUrl });
  await db.connect();
  await db.query('create extension if not exists pg_stat_statements');
  await db.query('select pg_stat_statements_reset()');
  return async (operations: number) => {
    const r = await db.query<{ calls: string; ms: number; plans: string; planMs: number; toplevel: boolean; query: string }>(
      `select calls::text, total_exec_time as ms, plans::text, total_plan_time as "planMs", toplevel, regexp_replace(query, '\\s+', ' ', 'g') as query
       from pg_stat_statements where query not like '%pg_stat_statements%' order by total_exec_time desc limit 25`,
    );
    await db.end();
    return [
      `     Postgres statements during ${during} (pg_stat_statements; nested = run inside a statement above; time includes lock waits), per ${unit}:`,
      `        calls/op    ms/op  plans/op plan ms/op  level   statement`,
      ...r.rows.map(
        (x) => `     ${(Number(x.calls) / operations).toFixed(2).padStart(10)} ${(x.ms / operations).toFixed(3).padStart(8)} ${(Number(x.plans) / operations).toFixed(2).padStart(9)} ${(x.planMs / operations).toFixed(3).padStart(10)}  ${x.toplevel ? 'top   ' : 'nested'}  ${x.query.slice(0, 140)}`,
      ),
    ];
  };
}

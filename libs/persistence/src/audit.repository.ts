import type { Tx } from './database';

export interface AuditEntry {
  principal: string;
  role: string;
  method: string;
  resource: string;
  requestId?: string;
  transport: string;
  details?: Record<string, unknown>;
}

export interface AuditRecord extends AuditEntry {
  id: string;
  at: Date;
}

export class AuditRepository {
  async append(tx: Tx, entry: AuditEntry): Promise<void> {
    await tx.auditRecord.create({
      data: {
        principal: entry.principal,
        role: entry.role,
        method: entry.method,
        resource: entry.resource,
        requestId: entry.requestId ?? null,
        transport: entry.transport,
        details: (entry.details ?? {}) as object,
      },
    });
  }

  async list(tx: Tx, opts: { resource?: string; limit: number; beforeId?: string }): Promise<AuditRecord[]> {
    const rows = await tx.auditRecord.findMany({
      where: { ...(opts.resource ? { resource: opts.resource } : {}), ...(opts.beforeId ? { id: { lt: BigInt(opts.beforeId) } } : {}) },
      orderBy: { id: 'desc' },
      take: opts.limit,
    });
    return rows.map((r) => ({
      id: r.id.toString(),
      at: r.at,
      principal: r.principal,
      role: r.role,
      method: r.method,
      resource: r.resource,
      ...(r.requestId ? { requestId: r.requestId } : {}),
      transport: r.transport,
      details: r.details as Record<string, unknown>,
    }));
  }
}

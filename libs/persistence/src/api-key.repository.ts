import type { Role } from '#domain';
import type { Tx } from './database';

export interface ApiKeyRecord {
  id: string;
  name: string;
  role: Role;
  secretHash: string;
  createTime: Date;
  lastUseTime?: Date;
  revokeTime?: Date;
}

export class ApiKeyRepository {
  async insert(tx: Tx, key: { id: string; name: string; role: Role; secretHash: string }): Promise<ApiKeyRecord> {
    const row = await tx.apiKey.create({ data: key });
    return this.map(row);
  }

  async find(tx: Tx, id: string): Promise<ApiKeyRecord | undefined> {
    const row = await tx.apiKey.findUnique({ where: { id } });
    return row ? this.map(row) : undefined;
  }

  async list(tx: Tx): Promise<ApiKeyRecord[]> {
    const rows = await tx.apiKey.findMany({ orderBy: { createdAt: 'asc' } });
    return rows.map((r) => this.map(r));
  }

  async countActiveAdmins(tx: Tx): Promise<number> {
    return tx.apiKey.count({ where: { role: 'admin', revokedAt: null } });
  }

  async revoke(tx: Tx, id: string): Promise<void> {
    await tx.apiKey.update({ where: { id }, data: { revokedAt: new Date() } });
  }

  async touch(tx: Tx, id: string): Promise<void> {
    await tx.apiKey.update({ where: { id }, data: { lastUsedAt: new Date() } });
  }

  private map(row: { id: string; name: string; role: string; secretHash: string; createdAt: Date; lastUsedAt: Date | null; revokedAt: Date | null }): ApiKeyRecord {
    return {
      id: row.id,
      name: row.name,
      role: row.role as Role,
      secretHash: row.secretHash,
      createTime: row.createdAt,
      ...(row.lastUsedAt ? { lastUseTime: row.lastUsedAt } : {}),
      ...(row.revokedAt ? { revokeTime: row.revokedAt } : {}),
    };
  }
}

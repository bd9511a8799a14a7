import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { authorize, DomainError, ROLES, unauthenticated, Violations, type Principal, type Role } from '#domain';
import { ApiKeyRepository, type ApiKeyRecord } from '#persistence';
import type { CallContext } from './context';
import type { Mutations } from './mutations';

/** Keys look like mp_<8-char id>_<secret>; only a SHA-256 of the secret is stored. */
const KEY_FORMAT = /^mp_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{32,})$/;
const ALPHANUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

function newKeyId(): string {
  const bytes = randomBytes(8);
  return Array.from(bytes, (b) => ALPHANUM[b % ALPHANUM.length]).join('');
}

/** A new, well-formed key string (e.g. for MEMPLANE_BOOTSTRAP_KEY); nothing is stored. */
export function generateApiKey(): string {
  return `mp_${newKeyId()}_${randomBytes(32).toString('base64url')}`;
}

export interface ApiKeyView {
  id: string;
  name: string;
  role: Role;
  createTime: Date;
  lastUseTime?: Date;
  revokeTime?: Date;
}

function view(k: ApiKeyRecord): ApiKeyView {
  const { secretHash: _hidden, ...rest } = k;
  return rest;
}

export class ApiKeyService {
  private readonly keys = new ApiKeyRepository();
  /** Verified keys for a few seconds, so a busy client does not cost a query per call; revocation takes effect within the TTL. */
  private readonly cache = new Map<string, { principal: Principal; hash: string; until: number }>();
  private static readonly CACHE_MS = 5_000;

  constructor(private readonly mutations: Mutations) {}

  async authenticate(authorization: string | undefined): Promise<Principal> {
    if (!authorization) throw unauthenticated('missing credentials: send "Authorization: Bearer <api key>"');
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!m) throw unauthenticated('the Authorization header must be "Bearer <api key>"');
    const parsed = KEY_FORMAT.exec(m[1]!);
    if (!parsed) throw unauthenticated('the API key is malformed');
    const [, id, secret] = parsed as unknown as [string, string, string];
    const hash = hashSecret(secret);
    const cached = this.cache.get(id);
    if (cached && cached.until > Date.now() && cached.hash === hash) return cached.principal;
    const record = await this.keys.find(this.mutations.db.prisma, id);
    const expected = Buffer.from(record?.secretHash ?? '0'.repeat(64), 'hex');
    const ok = timingSafeEqual(expected, Buffer.from(hash, 'hex')) && record !== undefined && record.revokeTime === undefined;
    if (!ok || !record) throw unauthenticated('the API key is not valid or was revoked');
    const principal: Principal = { keyId: record.id, keyName: record.name, role: record.role };
    this.cache.set(id, { principal, hash, until: Date.now() + ApiKeyService.CACHE_MS });
    void this.keys.touch(this.mutations.db.prisma, id).catch(() => undefined);
    return principal;
  }

  async create(ctx: CallContext, input: { name: string; role: Role }, requestId?: string): Promise<{ key: ApiKeyView; secret: string }> {
    authorize(ctx.principal, 'keys.manage');
    const v = new Violations();
    if (!/^[A-Za-z0-9 ._-]{1,64}$/.test(input.name ?? '')) v.add('name', 'must be 1-64 letters, digits, spaces, ".", "_" or "-"');
    if (!ROLES.includes(input.role)) v.add('role', `must be one of ${ROLES.join(', ')}`);
    v.throwIfAny('INVALID_API_KEY_REQUEST');
    const id = newKeyId();
    const secret = randomBytes(32).toString('base64url');
    const key = await this.mutations.run(ctx, { method: 'CreateApiKey', resource: `apiKeys/${id}`, request: input, ...(requestId ? { requestId } : {}) }, (tx) =>
      this.keys.insert(tx, { id, name: input.name, role: input.role, secretHash: hashSecret(secret) }),
    );
    if (key.id !== id) {
      // A replayed request_id: the secret was shown once, to the first call, and is not stored.
      throw DomainError.exists('API_KEY_ALREADY_CREATED', `request_id ${requestId} already created key ${key.id}; its secret was returned only then`, { keyId: key.id });
    }
    return { key: view(key), secret: `mp_${id}_${secret}` };
  }

  async list(ctx: CallContext): Promise<ApiKeyView[]> {
    authorize(ctx.principal, 'keys.manage');
    return (await this.keys.list(this.mutations.db.prisma)).map(view);
  }

  async revoke(ctx: CallContext, id: string): Promise<void> {
    authorize(ctx.principal, 'keys.manage');
    await this.mutations.run(ctx, { method: 'RevokeApiKey', resource: `apiKeys/${id}`, request: { id } }, async (tx) => {
      const key = await this.keys.find(tx, id);
      if (!key) throw DomainError.notFound('apiKey', id);
      if (key.role === 'admin' && key.revokeTime === undefined && (await this.keys.countActiveAdmins(tx)) <= 1) {
        throw DomainError.precondition('LAST_ADMIN_KEY', `key ${id} is the last active admin key; create another admin key first`);
      }
      if (key.revokeTime === undefined) await this.keys.revoke(tx, id);
      return null;
    });
    this.cache.delete(id);
  }

  /**
   * First start: when no admin key exists, create one (from MEMPLANE_BOOTSTRAP_KEY if
   * given) and return its plaintext so the caller prints it once. Later starts return undefined.
   */
  async bootstrap(given?: string): Promise<{ key: string; generated: boolean } | undefined> {
    const db = this.mutations.db;
    return db.transaction(async (tx) => {
      await tx.$executeRaw`select pg_advisory_xact_lock(727275)`;
      if ((await this.keys.countActiveAdmins(tx)) > 0) {
        if (!given) return undefined;
        const m = KEY_FORMAT.exec(given)!;
        const existing = await this.keys.find(tx, m[1]!);
        if (existing) return undefined;
      }
      let id: string;
      let secret: string;
      if (given) {
        const m = KEY_FORMAT.exec(given);
        if (!m) throw new Error('MEMPLANE_BOOTSTRAP_KEY is malformed');
        id = m[1]!;
        secret = m[2]!;
      } else {
        id = newKeyId();
        secret = randomBytes(32).toString('base64url');
      }
      await this.keys.insert(tx, { id, name: 'bootstrap-admin', role: 'admin', secretHash: hashSecret(secret) });
      return { key: `mp_${id}_${secret}`, generated: !given };
    });
  }
}

-- CreateSchema
CREATE SCHEMA IF NOT EXISTS "public";

-- CreateEnum
CREATE TYPE "NodeKind" AS ENUM ('DRAM', 'CXL');

-- CreateEnum
CREATE TYPE "HostState" AS ENUM ('READY', 'MAINTENANCE', 'DOWN');

-- CreateEnum
CREATE TYPE "PoolMemoryType" AS ENUM ('VOLATILE', 'PERSISTENT');

-- CreateEnum
CREATE TYPE "PoolState" AS ENUM ('ACTIVE', 'DRAINING', 'DISABLED');

-- CreateEnum
CREATE TYPE "ApiKeyRole" AS ENUM ('viewer', 'operator', 'orchestrator', 'admin');

-- CreateTable
CREATE TABLE "hosts" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "labels" JSONB NOT NULL DEFAULT '{}',
    "state" "HostState" NOT NULL DEFAULT 'READY',
    "version" INTEGER NOT NULL DEFAULT 1,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "hosts_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "host_nodes" (
    "host_id" UUID NOT NULL,
    "node_id" INTEGER NOT NULL,
    "cpus" INTEGER[],
    "memory_bytes" BIGINT NOT NULL,
    "kind" "NodeKind" NOT NULL,

    CONSTRAINT "host_nodes_pkey" PRIMARY KEY ("host_id","node_id")
);

-- CreateTable
CREATE TABLE "host_performance" (
    "host_id" UUID NOT NULL,
    "cpu_node_id" INTEGER NOT NULL,
    "memory_node_id" INTEGER NOT NULL,
    "read_latency_ns" INTEGER NOT NULL,
    "write_latency_ns" INTEGER NOT NULL,
    "read_bandwidth_mbps" INTEGER NOT NULL,
    "write_bandwidth_mbps" INTEGER NOT NULL,

    CONSTRAINT "host_performance_pkey" PRIMARY KEY ("host_id","cpu_node_id","memory_node_id")
);

-- CreateTable
CREATE TABLE "host_distances" (
    "host_id" UUID NOT NULL,
    "from_node_id" INTEGER NOT NULL,
    "to_node_id" INTEGER NOT NULL,
    "distance" INTEGER NOT NULL,

    CONSTRAINT "host_distances_pkey" PRIMARY KEY ("host_id","from_node_id","to_node_id")
);

-- CreateTable
CREATE TABLE "pools" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "labels" JSONB NOT NULL DEFAULT '{}',
    "host_id" UUID NOT NULL,
    "host_node_id" INTEGER NOT NULL,
    "dax_device_path" TEXT,
    "capacity_bytes" BIGINT NOT NULL,
    "granule_bytes" BIGINT NOT NULL,
    "memory_type" "PoolMemoryType" NOT NULL,
    "state" "PoolState" NOT NULL DEFAULT 'ACTIVE',
    "allocated_bytes" BIGINT NOT NULL DEFAULT 0,
    "version" INTEGER NOT NULL DEFAULT 1,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "pools_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "api_keys" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "role" "ApiKeyRole" NOT NULL,
    "secret_hash" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "last_used_at" TIMESTAMPTZ(3),
    "revoked_at" TIMESTAMPTZ(3),

    CONSTRAINT "api_keys_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "audit_log" (
    "id" BIGSERIAL NOT NULL,
    "at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "principal" TEXT NOT NULL,
    "role" TEXT NOT NULL,
    "method" TEXT NOT NULL,
    "resource" TEXT NOT NULL,
    "request_id" TEXT,
    "transport" TEXT NOT NULL,
    "details" JSONB NOT NULL DEFAULT '{}',

    CONSTRAINT "audit_log_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "idempotency_records" (
    "principal" TEXT NOT NULL,
    "method" TEXT NOT NULL,
    "request_id" TEXT NOT NULL,
    "fingerprint" TEXT NOT NULL,
    "response" JSONB NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "idempotency_records_pkey" PRIMARY KEY ("principal","method","request_id")
);

-- CreateIndex
CREATE UNIQUE INDEX "hosts_name_key" ON "hosts"("name");

-- CreateIndex
CREATE UNIQUE INDEX "pools_name_key" ON "pools"("name");

-- CreateIndex
CREATE INDEX "pools_host_id_host_node_id_idx" ON "pools"("host_id", "host_node_id");

-- CreateIndex
CREATE INDEX "audit_log_resource_idx" ON "audit_log"("resource");

-- CreateIndex
CREATE INDEX "audit_log_at_idx" ON "audit_log"("at");

-- AddForeignKey
ALTER TABLE "host_nodes" ADD CONSTRAINT "host_nodes_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "host_performance" ADD CONSTRAINT "host_performance_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "host_distances" ADD CONSTRAINT "host_distances_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "pools" ADD CONSTRAINT "pools_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

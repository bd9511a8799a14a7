-- AlterTable
ALTER TABLE "vms" ADD COLUMN     "observed_at" TIMESTAMPTZ(3),
ADD COLUMN     "observed_devices" JSONB NOT NULL DEFAULT '[]',
ADD COLUMN     "qemu_pid" INTEGER,
ADD COLUMN     "qga_socket_path" TEXT,
ADD COLUMN     "qmp_socket_path" TEXT,
ADD COLUMN     "runtime_dir" TEXT;

-- AlterTable
ALTER TABLE "memory_groups" ADD COLUMN     "online_zones" JSONB NOT NULL DEFAULT '{}';

-- AlterTable
ALTER TABLE "operations" ADD COLUMN     "cancel_requested" BOOLEAN NOT NULL DEFAULT false;

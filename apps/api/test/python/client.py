#!/usr/bin/python3
"""An independent gRPC client for Memplane, written against Debian's python3-grpcio.

It drives one scenario through the public gRPC API with stubs compiled from
proto/ by python3-grpc-tools, and prints one JSON object of what it observed
on stdout; apps/api/test/python-grpc.e2e-spec.ts runs it and checks every
observation. The script judges nothing itself: calls meant to fail are caught
and described (code, reason, field violations), and a call meant to succeed
that fails stops the script with the gRPC error on stderr.

    /usr/bin/python3 client.py --target 127.0.0.1:50051 --key mp_... \
        --viewer-key mp_... --out-dir /tmp/stubs

--out-dir holds the stubs, generated (see README.md) with
    /usr/bin/python3 -m grpc_tools.protoc -I proto -I apps/api/test/python/proto \
        -I <grpc_tools/_proto> --python_out=DIR --grpc_python_out=DIR \
        <memplane/v1/*.proto> <google/rpc/*.proto> \
        grpc_health/v1/health.proto grpc_reflection/v1/reflection.proto
(Debian packages neither grpcio-health-checking nor grpcio-reflection, so
their canonical protos are vendored in apps/api/test/python/proto, under the
same file paths those PyPI packages use, and compiled like the others).

Int64 fields are reported as decimal strings, as the proto3 JSON mapping
does, so no byte count loses precision on its way to JavaScript.
"""

import argparse
import json
import sys

GiB = 1024**3
TIMEOUT = 15  # seconds, per call


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="host:port of the gRPC server")
    p.add_argument("--key", required=True, help="an API key allowed to write inventory")
    p.add_argument("--viewer-key", required=True, help="an API key with the viewer role")
    p.add_argument("--out-dir", required=True, help="directory holding the generated stubs")
    return p.parse_args()


args = parse_args()
# The stubs' packages (memplane.v1, google.rpc, grpc_health.v1, ...) are
# namespace packages, so google.rpc here joins Debian's google.protobuf.
sys.path.insert(0, args.out_dir)

import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, field_mask_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1 import reflection_pb2, reflection_pb2_grpc  # noqa: E402
from memplane.v1 import host_pb2, host_pb2_grpc, pool_pb2, pool_pb2_grpc  # noqa: E402


def bearer(key):
    return [("authorization", f"Bearer {key}")]


def error_of(err):
    """Everything a failed call tells: code, message, and the rich details
    decoded from grpc-status-details-bin (google.rpc.Status)."""
    out = {"code": err.code().name, "message": err.details(), "violations": []}
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    out["has_status_details"] = raw is not None
    if raw is None:
        return out
    status = status_pb2.Status.FromString(raw)
    out["status_code"] = status.code  # the numeric code, repeated inside the Status
    out["status_message"] = status.message
    out["detail_types"] = [d.type_url for d in status.details]
    for any_msg in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        req = error_details_pb2.RequestInfo()
        if any_msg.Unpack(info):
            out["reason"] = info.reason
            out["domain"] = info.domain
            out["metadata"] = dict(info.metadata)
        elif any_msg.Unpack(bad):
            out["violations"] = [{"field": v.field, "description": v.description} for v in bad.field_violations]
        elif any_msg.Unpack(req):
            out["request_id"] = req.request_id
    return out


def attempt(fn):
    """Runs one call; returns ({"code": "OK"}, response) or (error observation, None)."""
    try:
        return {"code": "OK"}, fn()
    except grpc.RpcError as err:
        return error_of(err), None


def host_view(h):
    return {
        "name": h.name,
        "uid": h.uid,
        "description": h.description,
        "labels": dict(h.labels),
        "state": host_pb2.HostState.Name(h.state),
        "etag": h.etag,
        "has_create_time": h.HasField("create_time") and h.create_time.seconds > 0,
        "nodes": [
            {"node_id": n.node_id, "cpus": list(n.cpus), "memory_bytes": str(n.memory_bytes), "kind": host_pb2.NodeKind.Name(n.kind)}
            for n in h.nodes
        ],
        "performance": [
            {
                "cpu_node_id": p.cpu_node_id,
                "memory_node_id": p.memory_node_id,
                "read_latency_ns": str(p.read_latency_ns),
                "write_latency_ns": str(p.write_latency_ns),
                "read_bandwidth_mbps": str(p.read_bandwidth_mbps),
                "write_bandwidth_mbps": str(p.write_bandwidth_mbps),
            }
            for p in h.performance
        ],
        "distances": [{"from": d.from_node_id, "to": d.to_node_id, "distance": d.distance} for d in h.distances],
    }


def pool_view(p):
    return {
        "name": p.name,
        "uid": p.uid,
        "host": p.host,
        "host_node_id": p.host_node_id,
        "capacity_bytes": str(p.capacity_bytes),
        "granule_bytes": str(p.granule_bytes),
        "allocated_bytes": str(p.allocated_bytes),
        "free_bytes": str(p.free_bytes),
        "memory_type": pool_pb2.PoolMemoryType.Name(p.memory_type),
        "state": pool_pb2.PoolState.Name(p.state),
        "labels": dict(p.labels),
        "etag": p.etag,
    }


def sample_host(name):
    """Nodes 0 and 1 are DRAM with CPUs; node 2 is 128 GiB of CPU-less CXL memory."""
    DRAM, CXL = host_pb2.NODE_KIND_DRAM, host_pb2.NODE_KIND_CXL
    perf = host_pb2.NodePerformance
    dist = host_pb2.NodeDistance
    return host_pb2.Host(
        name=name,
        description="created by the Python client",
        labels={"rack": "r1"},
        nodes=[
            host_pb2.HostNode(node_id=0, cpus=[0, 1, 2, 3], memory_bytes=32 * GiB, kind=DRAM),
            host_pb2.HostNode(node_id=1, cpus=[4, 5, 6, 7], memory_bytes=32 * GiB, kind=DRAM),
            host_pb2.HostNode(node_id=2, cpus=[], memory_bytes=128 * GiB, kind=CXL),
        ],
        performance=[
            perf(cpu_node_id=0, memory_node_id=0, read_latency_ns=100, write_latency_ns=100, read_bandwidth_mbps=51200, write_bandwidth_mbps=51200),
            perf(cpu_node_id=0, memory_node_id=2, read_latency_ns=250, write_latency_ns=260, read_bandwidth_mbps=20480, write_bandwidth_mbps=18432),
            perf(cpu_node_id=1, memory_node_id=1, read_latency_ns=100, write_latency_ns=100, read_bandwidth_mbps=51200, write_bandwidth_mbps=51200),
            perf(cpu_node_id=1, memory_node_id=2, read_latency_ns=300, write_latency_ns=310, read_bandwidth_mbps=16384, write_bandwidth_mbps=16384),
        ],
        distances=[
            dist(from_node_id=0, to_node_id=0, distance=10),
            dist(from_node_id=0, to_node_id=1, distance=21),
            dist(from_node_id=0, to_node_id=2, distance=24),
            dist(from_node_id=1, to_node_id=1, distance=10),
            dist(from_node_id=1, to_node_id=0, distance=21),
            dist(from_node_id=1, to_node_id=2, distance=28),
            dist(from_node_id=2, to_node_id=2, distance=10),
        ],
    )


def reflection_observations(channel, metadata):
    """Lists the services, fetches the file that defines PoolService, compares
    its messages with our stubs, and tries to load it the way strict clients
    (grpcurl, protobuf's DescriptorPool) do."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="memplane.v1.PoolService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="memplane.v1.HostService"),
    ]
    responses = list(stub.ServerReflectionInfo(iter(requests), metadata=metadata, timeout=TIMEOUT))
    out = {"responses": len(responses), "services": [], "files": {}}
    files = {}
    for r in responses:
        kind = r.WhichOneof("message_response")
        if kind == "list_services_response":
            out["services"] = sorted(s.name for s in r.list_services_response.service)
        elif kind == "file_descriptor_response":
            for raw in r.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files[fd.name] = fd
        elif kind == "error_response":
            out["error"] = {"code": r.error_response.error_code, "message": r.error_response.error_message}
    files = list(files.values())
    out["files"] = {fd.name: list(fd.dependency) for fd in files}

    # What the raw descriptors say, read without building them.
    messages = {f"{fd.package}.{m.name}": m for fd in files for m in fd.message_type}
    for fd in files:
        for svc in fd.service:
            if f"{fd.package}.{svc.name}" == "memplane.v1.PoolService":
                out["pool_methods"] = [f"{m.name}({m.input_type.lstrip('.')}) -> {m.output_type.lstrip('.')}" for m in svc.method]
    out["matches_stubs"] = {}
    for stub_msg in (pool_pb2.Pool, pool_pb2.UpdatePoolRequest, host_pb2.Host, host_pb2.HostNode, host_pb2.NodePerformance):
        name = stub_msg.DESCRIPTOR.full_name
        reflected = messages.get(name)
        ours = [(f.name, f.number, f.type) for f in stub_msg.DESCRIPTOR.fields]
        out["matches_stubs"][name] = reflected is not None and [(f.name, f.number, f.type) for f in reflected.field] == ours

    # A strict client builds the files into a descriptor pool, dependencies first.
    pool = descriptor_pool.DescriptorPool()
    pending, added = {fd.name: fd for fd in files}, set()
    try:
        while pending:
            ready = [fd for fd in pending.values() if all(d in added for d in fd.dependency)]
            if not ready:
                raise LookupError(f"dependencies never returned: {sorted({d for fd in pending.values() for d in fd.dependency} - added)}")
            for fd in ready:
                pool.Add(fd)
                added.add(fd.name)
                del pending[fd.name]
        pool.FindServiceByName("memplane.v1.PoolService")
        out["strict_load"] = "ok"
    except Exception as e:  # the error text is the observation
        out["strict_load"] = " ".join(str(e).split())
    return out


def main():
    # Which grpc and protobuf this is: the test insists on Debian's packages.
    obs = {"runtime": {"grpc_version": grpc.__version__, "grpc_file": grpc.__file__, "protobuf_file": sys.modules["google.protobuf"].__file__}}
    channel = grpc.insecure_channel(args.target)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    hosts = host_pb2_grpc.HostServiceStub(channel)
    pools = pool_pb2_grpc.PoolServiceStub(channel)
    writer = bearer(args.key)  # an operator key: reads and writes inventory
    viewer = bearer(args.viewer_key)

    # Health needs no key.
    health = health_pb2_grpc.HealthStub(channel)
    ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
    overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    per_service = health.Check(health_pb2.HealthCheckRequest(service="memplane.v1.PoolService"), timeout=TIMEOUT)
    unknown, _ = attempt(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT))
    obs["health"] = {"overall": ServingStatus.Name(overall.status), "pool_service": ServingStatus.Name(per_service.status), "unknown_service": unknown["code"]}

    # Reflection needs a key like every call but health.
    obs["reflection"] = reflection_observations(channel, writer)

    # A host, read back.
    created = hosts.CreateHost(host_pb2.CreateHostRequest(host=sample_host("py-host"), request_id="py-create-host-1"), metadata=writer, timeout=TIMEOUT)
    obs["create_host"] = host_view(created)
    # The same request_id again returns the first result (AIP-155).
    replay = hosts.CreateHost(host_pb2.CreateHostRequest(host=sample_host("py-host"), request_id="py-create-host-1"), metadata=writer, timeout=TIMEOUT)
    obs["create_host_replay"] = {"uid": replay.uid, "etag": replay.etag}
    obs["get_host"] = host_view(hosts.GetHost(host_pb2.GetHostRequest(name="py-host"), metadata=writer, timeout=TIMEOUT))

    # Three pools on the CXL node.
    created_pools = {}
    for name, gib in (("py-pool-a", 16), ("py-pool-b", 16), ("py-pool-c", 32)):
        p = pools.CreatePool(
            pool_pb2.CreatePoolRequest(
                pool=pool_pb2.Pool(name=name, host="py-host", host_node_id=2, capacity_bytes=gib * GiB, labels={"tier": "cxl"}),
            ),
            metadata=writer,
            timeout=TIMEOUT,
        )
        created_pools[name] = p
    obs["create_pools"] = [pool_view(p) for p in created_pools.values()]

    # Page through them two at a time.
    pages, token = [], ""
    while True:
        page = pools.ListPools(pool_pb2.ListPoolsRequest(page_size=2, page_token=token, host="py-host"), metadata=writer, timeout=TIMEOUT)
        pages.append({"names": [p.name for p in page.pools], "total_size": page.total_size, "has_next": bool(page.next_page_token)})
        token = page.next_page_token
        if not token or len(pages) > 10:
            break
    obs["list_pools_pages"] = pages

    # Grow pool a to 24 GiB, naming only capacity_bytes in the mask and guarding with its etag.
    old_etag = created_pools["py-pool-a"].etag
    update = pool_pb2.UpdatePoolRequest(
        pool=pool_pb2.Pool(name="py-pool-a", capacity_bytes=24 * GiB, description="ignored: not in the mask", etag=old_etag),
        update_mask=field_mask_pb2.FieldMask(paths=["capacity_bytes"]),
    )
    updated = pools.UpdatePool(update, metadata=writer, timeout=TIMEOUT)
    obs["update_pool"] = {**pool_view(updated), "description": updated.description, "old_etag": old_etag}

    # The same update again carries a stale etag now.
    stale, _ = attempt(lambda: pools.UpdatePool(update, metadata=writer, timeout=TIMEOUT))
    obs["stale_update"] = stale
    after = pools.GetPool(pool_pb2.GetPoolRequest(name="py-pool-a"), metadata=writer, timeout=TIMEOUT)
    obs["pool_after_stale_update"] = {"capacity_bytes": str(after.capacity_bytes), "etag": after.etag}

    # Invalid input: a bad name and a CXL node with a CPU, with our own correlation id.
    bad = sample_host("Bad_Name")
    bad.nodes[2].cpus.append(8)
    invalid, _ = attempt(
        lambda: hosts.CreateHost(host_pb2.CreateHostRequest(host=bad), metadata=writer + [("x-request-id", "py-invalid-host-1")], timeout=TIMEOUT)
    )
    obs["invalid_host"] = invalid
    # A field mask naming an immutable field.
    invalid_mask, _ = attempt(
        lambda: pools.UpdatePool(
            pool_pb2.UpdatePoolRequest(pool=pool_pb2.Pool(name="py-pool-b", granule_bytes=256 * 1024**2), update_mask=field_mask_pb2.FieldMask(paths=["granule_bytes"])),
            metadata=writer,
            timeout=TIMEOUT,
        )
    )
    obs["invalid_mask"] = invalid_mask

    # Authentication and authorisation.
    obs["no_key"], _ = attempt(lambda: hosts.GetHost(host_pb2.GetHostRequest(name="py-host"), timeout=TIMEOUT))
    obs["bad_key"], _ = attempt(lambda: hosts.GetHost(host_pb2.GetHostRequest(name="py-host"), metadata=bearer("mp_AAAAAAAA_" + "x" * 43), timeout=TIMEOUT))
    viewer_read, viewer_host = attempt(lambda: hosts.GetHost(host_pb2.GetHostRequest(name="py-host"), metadata=viewer, timeout=TIMEOUT))
    obs["viewer_read"] = {**viewer_read, "name": viewer_host.name if viewer_host else None}
    obs["viewer_write"], _ = attempt(
        lambda: pools.CreatePool(
            pool_pb2.CreatePoolRequest(pool=pool_pb2.Pool(name="py-pool-v", host="py-host", host_node_id=2, capacity_bytes=1 * GiB)),
            metadata=viewer,
            timeout=TIMEOUT,
        )
    )

    obs["missing_host"], _ = attempt(lambda: hosts.GetHost(host_pb2.GetHostRequest(name="no-such-host"), metadata=writer, timeout=TIMEOUT))

    # A host with pools cannot go; its pools can, then it can.
    obs["delete_host_with_pools"], _ = attempt(lambda: hosts.DeleteHost(host_pb2.DeleteHostRequest(name="py-host"), metadata=writer, timeout=TIMEOUT))
    deletions = {}
    for name in ("py-pool-a", "py-pool-b", "py-pool-c"):
        etag = after.etag if name == "py-pool-a" else created_pools[name].etag
        deletions[name], _ = attempt(lambda: pools.DeletePool(pool_pb2.DeletePoolRequest(name=name, etag=etag), metadata=writer, timeout=TIMEOUT))
    obs["delete_pools"] = {k: v["code"] for k, v in deletions.items()}
    remaining = pools.ListPools(pool_pb2.ListPoolsRequest(host="py-host"), metadata=writer, timeout=TIMEOUT)
    obs["pools_after_delete"] = {"count": len(remaining.pools), "total_size": remaining.total_size}
    host_deleted, _ = attempt(lambda: hosts.DeleteHost(host_pb2.DeleteHostRequest(name="py-host", etag=created.etag), metadata=writer, timeout=TIMEOUT))
    obs["delete_host"] = host_deleted["code"]
    obs["get_deleted_host"], _ = attempt(lambda: hosts.GetHost(host_pb2.GetHostRequest(name="py-host"), metadata=writer, timeout=TIMEOUT))

    channel.close()
    json.dump(obs, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

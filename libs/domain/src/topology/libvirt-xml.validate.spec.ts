/**
 * Validates the rendered domain XML against libvirt's own RelaxNG schema with Debian's
 * `virt-xml-validate` (libvirt-clients). Lives outside the pure code: it spawns a process.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileTopology } from './compile';
import { renderLibvirtDomainXml } from './libvirt-xml';
import { oneCxlInput, perfOf, staticGroup, twoSocketInput } from './spec-helpers';
import { MiB } from '../units';
import type { Topology } from './types';

const VALIDATOR = '/usr/bin/virt-xml-validate';

function validate(xml: string): { ok: boolean; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'memplane-libvirt-'));
  const file = join(dir, 'domain.xml');
  try {
    writeFileSync(file, xml);
    try {
      const out = execFileSync(VALIDATOR, [file, 'domain'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      return { ok: true, output: out };
    } catch (e) {
      const err = e as { stdout?: string; stderr?: string };
      return { ok: false, output: `${err.stdout ?? ''}${err.stderr ?? ''}` };
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function daxTopology(): Topology {
  const input = twoSocketInput();
  input.pools.push({ id: 'pool-dax', hostNodeId: 2, memoryType: 'PERSISTENT', daxDevicePath: '/dev/dax0.0' });
  input.groups.push(staticGroup('dax-dimm', 'pool-dax', 256 * MiB));
  return compileTopology(input);
}

const cases: [string, () => Topology][] = [
  ['q35: two sockets, two CXL nodes, pc-dimm, virtio-mem on root ports, spare ports', () => compileTopology(twoSocketInput())],
  ['pc: golden G1 layout', () => compileTopology(oneCxlInput(perfOf(100, 100, 51200, 51200), perfOf(250, 250, 20480, 20480)))],
  ['DAX-backed persistent DIMM', daxTopology],
];

describe('libvirt domain XML validates with virt-xml-validate', { skip: !existsSync(VALIDATOR) && `${VALIDATOR} not installed` }, () => {
  for (const [name, build] of cases) {
    it(name, () => {
      const xml = renderLibvirtDomainXml(build(), {
        kernel: '/var/lib/memplane/vmlinuz',
        initrd: '/var/lib/memplane/initrd.img',
        append: 'console=ttyS0 memhp_default_state=online_movable',
        qgaSocketPath: '/run/memplane/vm/qga.sock',
      });
      const r = validate(xml);
      assert.ok(r.ok, `${r.output}\n${xml}`);
    });
  }

  it('an invalid document is rejected (the validator really runs)', () => {
    const r = validate("<domain type='qemu'><name>x</name><bogus/></domain>");
    assert.equal(r.ok, false);
  });

  it('carries cells, distances, interconnects, memory devices and maxMemory', () => {
    const xml = renderLibvirtDomainXml(compileTopology(twoSocketInput()));
    assert.match(xml, /<maxMemory slots='8' unit='KiB'>16777216<\/maxMemory>/);
    assert.match(xml, /<cell id='3' memory='0' unit='KiB'>/);
    assert.match(xml, /<sibling id='2' value='24'\/>/);
    assert.match(xml, /<latency initiator='0' target='2' type='read' value='250'\/>/);
    assert.match(xml, /<bandwidth initiator='0' target='2' type='read' value='20971520' unit='KiB'\/>/);
    assert.match(xml, /<memory model='dimm'>/);
    assert.match(xml, /<memory model='virtio-mem'>/);
    assert.match(xml, /<requested unit='KiB'>524288<\/requested>/);
    assert.match(xml, /<memnode cellid='2' mode='strict' nodeset='2'\/>/);
    assert.doesNotMatch(xml, /vmem-later/);
  });
});

import { DomainError, type ErrorCode } from '#domain';

/**
 * How QEMU's error classes (QAPI `QapiErrorClass`) become domain errors. Workers decide
 * retry vs. terminal failure on `code`; the QEMU text is kept verbatim in the message and in
 * `metadata.qemuMessage`, because it is the only precise description of what went wrong
 * ("backend memory size must be multiple of 0x200000", "Bus 'pcie.0' does not support
 * hotplugging", ...).
 */
const CLASS_TO_CODE: Readonly<Record<string, ErrorCode>> = {
  // Everything QEMU refuses for a reason of its own: bad property, busy slot, no space...
  // With arguments planned by our own compiler this means "not possible in this VM's state".
  GenericError: 'FAILED_PRECONDITION',
  // The QEMU build lacks the command: a version mismatch, not something a retry fixes.
  CommandNotFound: 'FAILED_PRECONDITION',
  DeviceNotActive: 'FAILED_PRECONDITION',
  DeviceNotFound: 'NOT_FOUND',
  KVMMissingCap: 'FAILED_PRECONDITION',
};

export type QemuChannel = 'QEMU' | 'QGA';

export interface QapiError {
  class: string;
  desc: string;
}

/** `QEMU_GENERIC_ERROR`, `QEMU_DEVICE_NOT_FOUND`, `QGA_GENERIC_ERROR`, ... */
export function qemuErrorReason(channel: QemuChannel, errorClass: string): string {
  const snake = errorClass
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
    .toUpperCase();
  return `${channel}_${snake}`;
}

export function fromQapiError(channel: QemuChannel, command: string, err: QapiError): DomainError {
  const code = CLASS_TO_CODE[err.class] ?? 'INTERNAL';
  return new DomainError(code, qemuErrorReason(channel, err.class), `${command}: ${err.desc}`, [], {
    qemuClass: err.class,
    qemuMessage: err.desc,
    command,
  });
}

/** The socket is gone or never answered: retryable once the VM is back. */
export function unavailable(channel: QemuChannel, message: string, metadata: Record<string, string> = {}): DomainError {
  const reason = channel === 'QEMU' ? 'QMP_UNAVAILABLE' : 'QGA_UNAVAILABLE';
  return new DomainError('UNAVAILABLE', reason, message, [], metadata);
}

export function deadline(channel: QemuChannel, what: string, timeoutMs: number): DomainError {
  const reason = channel === 'QEMU' ? 'QMP_TIMEOUT' : 'QGA_TIMEOUT';
  return new DomainError('DEADLINE_EXCEEDED', reason, `${what} timed out after ${timeoutMs} ms`, [], {
    timeoutMs: String(timeoutMs),
  });
}

export function protocolError(channel: QemuChannel, message: string): DomainError {
  const reason = channel === 'QEMU' ? 'QMP_PROTOCOL_ERROR' : 'QGA_PROTOCOL_ERROR';
  return new DomainError('INTERNAL', reason, message);
}

import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { DomainError, ERROR_DOMAIN, isDomainError, type ErrorCode } from '#domain';
import { Any } from '#contracts/generated/google/protobuf/any';
import { BadRequest, ErrorInfo, RequestInfo } from '#contracts/generated/google/rpc/error_details';
import { Status } from '#contracts/generated/google/rpc/status';

export const GRPC_STATUS: Record<ErrorCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  OUT_OF_RANGE: status.OUT_OF_RANGE,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  ABORTED: status.ABORTED,
  RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  UNAUTHENTICATED: status.UNAUTHENTICATED,
  PERMISSION_DENIED: status.PERMISSION_DENIED,
  UNAVAILABLE: status.UNAVAILABLE,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  CANCELLED: status.CANCELLED,
  INTERNAL: status.INTERNAL,
};

const pack = (typeUrl: string, value: Uint8Array): Any => ({ typeUrl: `type.googleapis.com/${typeUrl}`, value: Buffer.from(value) });

/**
 * The gRPC rich error model: status code, message, and a google.rpc.Status in
 * `grpc-status-details-bin` with ErrorInfo (reason, domain, metadata),
 * BadRequest (field violations) and RequestInfo (correlation id).
 */
export function toServiceError(e: unknown, correlationId: string, log: (msg: string) => void): Partial<ServiceError> {
  let error: DomainError;
  if (isDomainError(e)) error = e;
  else {
    log(`unexpected failure [${correlationId}]: ${(e as Error)?.stack ?? String(e)}`);
    error = new DomainError('INTERNAL', 'INTERNAL', `internal error; quote correlation id ${correlationId}`);
  }
  const code = GRPC_STATUS[error.code];
  const details: Any[] = [
    pack('google.rpc.ErrorInfo', ErrorInfo.encode({ reason: error.reason, domain: ERROR_DOMAIN, metadata: { ...error.metadata } }).finish()),
  ];
  if (error.violations.length) {
    details.push(pack('google.rpc.BadRequest', BadRequest.encode({ fieldViolations: error.violations.map((v) => ({ field: v.field, description: v.description })) }).finish()));
  }
  details.push(pack('google.rpc.RequestInfo', RequestInfo.encode({ requestId: correlationId, servingData: '' }).finish()));
  const metadata = new Metadata();
  metadata.set('grpc-status-details-bin', Buffer.from(Status.encode({ code, message: error.message, details }).finish()));
  return { code, details: error.message, message: error.message, metadata };
}

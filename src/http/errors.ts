/**
 * Errors on the wire, both ways: a KeepError's code as an HTTP status and
 * the body `{error: {code, message}}` (server), and such a body read back
 * into a KeepError (client).
 *
 * @module
 */

import { type ErrorCode, isErrorCode, KeepError } from "../errors.ts";

/** Every error response: `{error: {code, message}}`. */
export interface ErrorBody {
  error: { code: string; message: string };
}

/** HTTP status for each code. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  usage: 400,
  invalid: 400,
  not_found: 404,
  conflict: 409,
  unauthorized: 401,
  forbidden: 403,
  too_large: 413,
  timeout: 408,
  integrity: 422,
  unavailable: 503,
  incomplete: 200,
  quota: 507,
  io: 500,
  internal: 500,
};

/** The JSON answer for an error. */
export function errorResponse(err: KeepError): Response {
  const body: ErrorBody = { error: { code: err.code, message: err.message } };
  return Response.json(body, { status: HTTP_STATUS[err.code] });
}

/** Reads an error body into a KeepError (for the client). */
export function errorFromBody(status: number, body: unknown): KeepError {
  const e = (body as ErrorBody | null)?.error;
  if (e && typeof e.message === "string" && isErrorCode(e.code)) {
    return new KeepError(e.code, e.message);
  }
  // Deno's HTTP layer answers some requests itself, with no body: request
  // headers over 64 KiB get an empty 400 before Keep sees them.
  return new KeepError(
    status >= 500 ? "unavailable" : "invalid",
    status === 400 && body === null
      ? "Cannot use server answer: HTTP 400 with no error body (refused before Keep saw the request; headers over 64 KiB are)"
      : `Cannot use server answer: HTTP ${status}`,
  );
}

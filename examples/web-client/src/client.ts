// A small client of follow-service: queries and mutations over HTTP (fetch), subscriptions over
// WebSocket (graphql-ws, the graphql-transport-ws protocol). Operations are TypedDocumentNodes made by
// the generated graphql() function (see operations.ts), so results and variables are typed from the
// schema. Works in browsers and in Node 20 (pass a WebSocket implementation there, e.g. `ws`).
import type { TypedDocumentNode } from '@graphql-typed-document-node/core';
import { getOperationAST, print, type DocumentNode, type GraphQLFormattedError } from 'graphql';
import { createClient, type Client as WsClient, type ClientOptions as WsClientOptions } from 'graphql-ws';

/** The `extensions.code` values follow-service sends (README.md "Errors", src/error.rs). */
export const ERROR_CODES = [
  'UNAUTHENTICATED', // no token on a mutation or subscription, or a malformed, expired or forged token (HTTP 401)
  'FORBIDDEN', // following across a block (either way: "you cannot follow this user"); an admin-only mutation without the admin role
  'BAD_USER_INPUT', // following oneself, a bad id or cursor, `first` outside 1..100, too many ids
  'NOT_FOUND', // following an unknown user; a viewer with no user record
  'RATE_LIMITED', // reserved: the server does not send it yet
  'SERVICE_UNAVAILABLE', // the database is unreachable: worth a retry later
  'INTERNAL_SERVER_ERROR', // anything else; the server logs details under the x-request-id
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && (ERROR_CODES as readonly string[]).includes(value);
}

/**
 * A failed operation: GraphQL errors in the response, an HTTP failure without a GraphQL body, or a
 * closed WebSocket. `code` is the first known `extensions.code`; parse and validation errors (an
 * operation the schema no longer accepts) carry none.
 */
export class FollowApiError extends Error {
  override readonly name = 'FollowApiError';
  /** The response's `errors`, empty for a transport failure. */
  readonly errors: readonly GraphQLFormattedError[];
  /** The first known `errors[].extensions.code`, if any. */
  readonly code: ErrorCode | undefined;
  /** The HTTP status, for queries and mutations. */
  readonly status: number | undefined;
  /** The `x-request-id` response header: quote it when reporting a server error. */
  readonly requestId: string | null;
  /** Partial data that came with the errors, if any. */
  readonly data: unknown;
  /** The WebSocket close code, for a subscription whose socket closed. */
  readonly closeCode: number | undefined;

  constructor(
    message: string,
    details: {
      errors?: readonly GraphQLFormattedError[];
      status?: number;
      requestId?: string | null;
      data?: unknown;
      closeCode?: number;
      /** For an error without GraphQL errors, e.g. a socket closed for a refused token. */
      code?: ErrorCode;
      cause?: unknown;
    } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.errors = details.errors ?? [];
    this.code = this.errors.map((e) => e.extensions?.['code']).find(isErrorCode) ?? details.code;
    this.status = details.status;
    this.requestId = details.requestId ?? null;
    this.data = details.data;
    this.closeCode = details.closeCode;
  }

  /** Whether any of the errors carries this code. */
  hasCode(code: ErrorCode): boolean {
    return this.code === code || this.errors.some((e) => e.extensions?.['code'] === code);
  }

  static fromErrors(
    errors: readonly GraphQLFormattedError[],
    details: { status?: number; requestId?: string | null; data?: unknown } = {},
  ): FollowApiError {
    const first = errors[0];
    const code = first?.extensions?.['code'];
    const message = `${typeof code === 'string' ? `${code}: ` : ''}${first?.message ?? 'unknown error'}${
      errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''
    }`;
    return new FollowApiError(message, { ...details, errors });
  }
}

export interface FollowClientOptions {
  /** The HTTP endpoint, e.g. http://127.0.0.1:8080/graphql. */
  url: string;
  /** The WebSocket endpoint; by default url with ws(s): and /ws appended (…/graphql/ws). */
  wsUrl?: string;
  /** A bearer token (`follow-service token --user ID`). Without it only public reads work. */
  token?: string;
  /** fetch to use; globalThis.fetch by default. */
  fetch?: typeof fetch;
  /** A WebSocket constructor; globalThis.WebSocket by default (Node 20 has none: pass `ws`). */
  webSocketImpl?: unknown;
  /** How long one HTTP request may take, in ms, when the call passes no signal of its own. */
  timeoutMs?: number;
  /**
   * graphql-ws event listeners for the shared WebSocket (`connected`, `closed`, …). `connected` fires
   * once the server acknowledged connection_init; the server does not acknowledge a subscribe.
   */
  on?: WsClientOptions['on'];
}

export interface ExecuteOptions {
  signal?: AbortSignal;
}

export interface SubscribeOptions {
  /** GraphQL errors of the operation, or the socket closing; the subscription ends after it. */
  onError?: (error: FollowApiError) => void;
  /** The server ended the subscription. */
  onComplete?: () => void;
}

const ACCEPT = 'application/graphql-response+json, application/json;q=0.9';

interface Printed {
  query: string;
  operationName: string | undefined;
}
const printed = new WeakMap<DocumentNode, Printed>();

/** The document as a query string, printed once per document. */
function printDocument(document: DocumentNode): Printed {
  let entry = printed.get(document);
  if (entry === undefined) {
    entry = { query: print(document), operationName: getOperationAST(document)?.name?.value };
    printed.set(document, entry);
  }
  return entry;
}

interface GraphQLResponse {
  data?: unknown;
  errors?: readonly GraphQLFormattedError[];
}

function isGraphQLResponse(body: unknown): body is GraphQLResponse {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return false;
  const errors = (body as { errors?: unknown }).errors;
  return ('data' in body || 'errors' in body) && (errors === undefined || Array.isArray(errors));
}

export function defaultWsUrl(url: string): string {
  const u = new URL(url);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  u.pathname = `${u.pathname.replace(/\/$/, '')}/ws`;
  return u.toString();
}

export class FollowClient {
  readonly #url: string;
  readonly #wsUrl: string;
  readonly #token: string | undefined;
  readonly #fetch: typeof fetch;
  readonly #webSocketImpl: unknown;
  readonly #timeoutMs: number;
  readonly #on: WsClientOptions['on'];
  #ws: WsClient | undefined;

  constructor(options: FollowClientOptions) {
    this.#url = options.url;
    this.#wsUrl = options.wsUrl ?? defaultWsUrl(options.url);
    this.#token = options.token;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#webSocketImpl = options.webSocketImpl;
    this.#timeoutMs = options.timeoutMs ?? 15_000;
    this.#on = options.on;
  }

  /**
   * Runs a query or mutation with POST and returns its data. Throws FollowApiError when the
   * response has errors (partial data is on the error) or when there is no GraphQL response.
   */
  async execute<TResult, TVariables>(
    document: TypedDocumentNode<TResult, TVariables>,
    variables: NoInfer<TVariables>,
    options: ExecuteOptions = {},
  ): Promise<TResult> {
    const { query, operationName } = printDocument(document);
    const headers: Record<string, string> = {
      'Content-Type': 'application/json',
      Accept: ACCEPT,
    };
    if (this.#token !== undefined) headers['Authorization'] = `Bearer ${this.#token}`;

    let response: Response;
    try {
      response = await this.#fetch(this.#url, {
        method: 'POST',
        headers,
        body: JSON.stringify({ query, variables, operationName }),
        signal: options.signal ?? AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (cause) {
      throw new FollowApiError(`${operationName ?? 'operation'}: request to ${this.#url} failed`, { cause });
    }

    const status = response.status;
    const requestId = response.headers.get('x-request-id');
    const text = await response.text();
    let body: unknown;
    if (/json/i.test(response.headers.get('content-type') ?? '')) {
      try {
        body = JSON.parse(text);
      } catch (cause) {
        throw new FollowApiError(`HTTP ${status}: response is not valid JSON`, { status, requestId, cause });
      }
    }

    // A GraphQL response may come with a non-2xx status (application/graphql-response+json, or the
    // 401 of a bad token): its errors say more than the status does.
    if (!isGraphQLResponse(body)) {
      const snippet = text.slice(0, 200).trim();
      throw new FollowApiError(`HTTP ${status} ${response.statusText}${snippet ? `: ${snippet}` : ''}`, {
        status,
        requestId,
      });
    }
    if (body.errors !== undefined && body.errors.length > 0) {
      throw FollowApiError.fromErrors(body.errors, { status, requestId, data: body.data });
    }
    if (body.data === undefined || body.data === null || !response.ok) {
      throw new FollowApiError(`HTTP ${status}: a response without data or errors`, { status, requestId });
    }
    return body.data as TResult;
  }

  /**
   * Starts a subscription over the shared WebSocket (opened on first use, with the token in the
   * connection_init payload). Returns a function that stops it.
   */
  subscribe<TResult, TVariables>(
    document: TypedDocumentNode<TResult, TVariables>,
    variables: NoInfer<TVariables>,
    onData: (data: TResult) => void,
    options: SubscribeOptions = {},
  ): () => void {
    const { query, operationName } = printDocument(document);
    const report = options.onError ?? ((error: FollowApiError) => console.error(error));
    return this.#wsClient().subscribe<TResult>(
      { query, operationName: operationName ?? null, variables: variables as Record<string, unknown> },
      {
        next: (result) => {
          if (result.errors !== undefined && result.errors.length > 0) {
            report(FollowApiError.fromErrors(result.errors, { data: result.data }));
          } else if (result.data !== undefined && result.data !== null) {
            onData(result.data);
          }
        },
        error: (error: unknown) => report(toSubscriptionError(error)),
        complete: () => options.onComplete?.(),
      },
    );
  }

  /** Closes the WebSocket, ending every subscription. */
  async dispose(): Promise<void> {
    const ws = this.#ws;
    this.#ws = undefined;
    await ws?.dispose();
  }

  #wsClient(): WsClient {
    this.#ws ??= createClient({
      url: this.#wsUrl,
      ...(this.#webSocketImpl === undefined ? {} : { webSocketImpl: this.#webSocketImpl }),
      connectionParams: this.#token === undefined ? {} : { Authorization: `Bearer ${this.#token}` },
      retryAttempts: 3,
      ...(this.#on === undefined ? {} : { on: this.#on }),
    });
    return this.#ws;
  }
}

/** Close codes of graphql-transport-ws that mean the same as an error code. */
const CLOSE_CODES: Readonly<Record<number, ErrorCode>> = {
  4401: 'UNAUTHENTICATED', // the connection_init token was refused
  4403: 'FORBIDDEN',
};

/** graphql-ws reports GraphQL errors as an array, a closed socket as a CloseEvent, else an Error. */
function toSubscriptionError(error: unknown): FollowApiError {
  if (Array.isArray(error)) return FollowApiError.fromErrors(error as GraphQLFormattedError[]);
  if (typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'number') {
    const reason = 'reason' in error && typeof error.reason === 'string' ? error.reason : '';
    return new FollowApiError(`WebSocket closed: ${error.code}${reason ? ` ${reason}` : ''}`, {
      closeCode: error.code,
      ...(CLOSE_CODES[error.code] === undefined ? {} : { code: CLOSE_CODES[error.code] }),
      cause: error,
    });
  }
  if (error instanceof FollowApiError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new FollowApiError(`subscription failed: ${message}`, { cause: error });
}

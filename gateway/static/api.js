// Thin fetch wrappers for the gateway's own endpoints (same origin, JSON in and out).

/** An HTTP error carrying the API's own message, shown to the user as it came. */
export class ApiError extends Error {
  constructor(status, statusText, detail) {
    super(`${status} ${statusText}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

/** The `detail` of a FastAPI error body as text: a string as is, a validation list as "field: msg" lines. */
export function describeDetail(body, fallback) {
  const detail = body && typeof body === "object" ? body.detail : undefined;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((e) => (e && e.msg ? `${(e.loc || []).filter((p) => p !== "body").join(".") || "body"}: ${e.msg}` : JSON.stringify(e)))
      .join("; ");
  }
  if (detail !== undefined) return JSON.stringify(detail);
  return fallback;
}

async function request(method, path, { body, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, "network error", `could not reach the gateway (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, response.statusText, describeDetail(data, text || "(empty body)"));
  }
  return data;
}

export const api = {
  status: () => request("GET", "/v1/status"),
  route: (prompt, isPrivate, key) => request("POST", "/route", { body: { prompt, private: isPrivate }, token: key }),
  generate: (body, key) => request("POST", "/generate", { body, token: key }),
  listKeys: (token) => request("GET", "/admin/keys", { token }),
  getBudget: (token) => request("GET", "/admin/budget", { token }),
  putBudget: (token, update) => request("PUT", "/admin/budget", { body: update, token }),
};

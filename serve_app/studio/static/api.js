// The service's HTTP API, as the studio uses it. Every URL is relative: the page's <base href> is
// the app's root, so the studio works under any route prefix.

/** An error answer of the service: its stable `code` and the `message` that says what to do. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function call(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "unreachable", `The service did not answer (${err.message}). Is it running?`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "http_error", error.message || `HTTP ${response.status}`);
  }
  return data;
}

export const api = {
  variants: () => call("GET", "variants"),
  submit: (form) => call("POST", "generate", form),
  status: (id) => call("GET", `status/${encodeURIComponent(id)}`),
  cancel: (id) => call("POST", `jobs/${encodeURIComponent(id)}/cancel`),
  remove: (id) => call("DELETE", `v1/videos/${encodeURIComponent(id)}`),
  remix: (id, prompt) => call("POST", `v1/videos/${encodeURIComponent(id)}/remix`, { prompt }),
  jobs: (after, limit) => {
    const query = new URLSearchParams({ limit: String(limit), order: "desc" });
    if (after) query.set("after", after);
    return call("GET", `jobs?${query}`);
  },
  /** URL of a job's result file (any format) and of its middle-frame thumbnail (JPEG). */
  contentUrl: (id) => `v1/videos/${encodeURIComponent(id)}/content`,
  thumbnailUrl: (id) => `v1/videos/${encodeURIComponent(id)}/content?variant=thumbnail`,
  eventsUrl: (id) => `jobs/${encodeURIComponent(id)}/events`,
};

/** "12 s", "3 min 4 s": an ETA for people. */
export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

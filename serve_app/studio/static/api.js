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

/** The API key the person gave (kept in this browser's localStorage), or "". */
const KEY_STORAGE = "wan-serve-api-key";
export const apiKey = {
  get: () => localStorage.getItem(KEY_STORAGE) || "",
  set: (key) => (key ? localStorage.setItem(KEY_STORAGE, key) : localStorage.removeItem(KEY_STORAGE)),
};

async function call(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  const key = apiKey.get();
  if (key) init.headers.Authorization = `Bearer ${key}`;
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
  health: () => call("GET", "health"),
  /** A finished job's result file and its middle-frame thumbnail (JPEG): from its signed file_url,
   * which a <video> or <img> can load without the key. Relative to the page's <base>. */
  contentUrl: (job) => job.file_url.replace(/^\//, ""),
  thumbnailUrl: (job) => `${job.file_url.replace(/^\//, "")}&variant=thumbnail`,
  /** The job's WebSocket: the key rides in a subprotocol, since a browser cannot set headers on one. */
  socket: (id, lastEventId) => {
    const url = new URL(`ws/jobs/${encodeURIComponent(id)}?last_event_id=${lastEventId}`, document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const key = apiKey.get();
    return new WebSocket(url, key ? ["wan-serve", `wan-serve.bearer.${key}`] : ["wan-serve"]);
  },
};

/** "12 s", "3 min 4 s": an ETA for people. */
export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

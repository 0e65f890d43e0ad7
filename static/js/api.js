// The public HTTP API, with errors turned into readable messages.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// API key of a server with auth on (TILEDETECT_AUTH): kept in this browser, sent as a Bearer
// header on API calls and as ?token= on URLs the browser or a GIS fetches on its own (tiles,
// downloads). With auth off no key is stored and nothing changes.
const KEY = "tiledetect.apiKey";
export const apiKey = () => localStorage.getItem(KEY);
export function setApiKey(token) {
  if (token) localStorage.setItem(KEY, token);
  else localStorage.removeItem(KEY);
}
export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}
// This server's URLs (templates with {z} too) carry the key; other hosts' never do.
export function withToken(url) {
  const key = apiKey();
  const ours = url.startsWith("/") || url.startsWith(location.origin);
  if (!key || !ours || /[?&]token=/.test(url)) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(key)}`;
}
let unauthorized = () => {};
export const onUnauthorized = (handler) => { unauthorized = handler; };

// FastAPI answers {detail: "text"} or {detail: [{loc, msg}, ...]} (validation errors).
function readable(detail, status) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        const where = (d.loc || []).filter((part) => part !== "body").join(".");
        return where ? `${where}: ${d.msg}` : d.msg;
      })
      .join("; ");
  }
  if (detail && typeof detail === "object") return JSON.stringify(detail);
  return `the server answered ${status}`;
}

export async function request(method, path, body) {
  const options = { method, headers: authHeaders() };
  if (body instanceof FormData) {
    options.body = body;
  } else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(`Cannot reach the server (${error.message})`, 0);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" ? data.detail : data;
    if (response.status === 401) unauthorized(readable(detail, 401));
    throw new ApiError(readable(detail, response.status), response.status);
  }
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body ?? {});
export const put = (path, body) => request("PUT", path, body);

// Upload with progress: fetch cannot report upload progress, XMLHttpRequest can.
export function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/images");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = xhr.responseText;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(readable(data && data.detail, xhr.status), xhr.status));
    };
    xhr.onerror = () => reject(new ApiError("Upload failed: cannot reach the server", 0));
    const form = new FormData();
    form.append("file", file);
    xhr.send(form);
  });
}

export async function poll(path, done, onUpdate, interval = 700) {
  for (;;) {
    const value = await get(path);
    onUpdate(value);
    if (done(value)) return value;
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

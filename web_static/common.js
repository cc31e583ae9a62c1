// Shared by the pages: JSON requests to this origin, and messages.
export async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: {"content-type": "application/json"}, body: JSON.stringify(body ?? {}),
  });
  const value = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(value?.error?.message ?? `request failed (${response.status})`);
  }
  return value;
}

export function say(element, text, kind) {
  element.textContent = text;
  element.className = kind ?? "";
}

// Language catalogues (web/i18n/<lang>.json): every user-visible string comes from here.
// Elements carry `data-i18n` (text) or `data-i18n-label` (aria-label) keys; code calls `t()`.

const LANGUAGES = ["en", "zh-CN"];
const STORAGE_KEY = "consilium.lang";
const catalogues = new Map();
let current = "en";

/** The language to start with: the remembered choice, else the browser's. */
export function preferredLanguage() {
  const stored = localStorage.getItem(STORAGE_KEY);
  if (LANGUAGES.includes(stored)) return stored;
  const browser = navigator.languages?.[0] || navigator.language || "en";
  return browser.toLowerCase().startsWith("zh") ? "zh-CN" : "en";
}

/** Load a catalogue (once) and make it the current language; remembered for the next visit. */
export async function setLanguage(lang, remember = false) {
  if (!LANGUAGES.includes(lang)) lang = "en";
  if (!catalogues.has(lang)) {
    const response = await fetch(`/i18n/${lang}.json`);
    catalogues.set(lang, await response.json());
  }
  current = lang;
  if (remember) localStorage.setItem(STORAGE_KEY, lang);
  document.documentElement.lang = lang;
  document.title = t("app.title");
  translate(document);
  return lang;
}

/** The current language's text for `key`, with `{name}` placeholders filled from `vars`. */
export function t(key, vars = {}) {
  const text = catalogues.get(current)?.[key] ?? catalogues.get("en")?.[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

/** Fill every `data-i18n` / `data-i18n-label` element under `root`. */
export function translate(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
}

/** A role's name in the current language. */
export function roleName(role) {
  const key = `role.${role}`;
  return t(key) === key ? t("role.other") : t(key);
}

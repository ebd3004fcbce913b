"""Open built book pages in headless Chromium with the network off and report what rendered.

Used by ``tests/test_book.py``; also handy by hand after ``make book``::

    python scripts/check_book.py _build/html chapters/ch01_generative_modelling.html --screenshots artifacts/

How it works, without WebDriver or the DevTools protocol:

* a small HTTP server on 127.0.0.1 serves the built HTML **and acts as Chromium's proxy for
  every request** (``--proxy-bypass-list=<-loopback>``), so it sees each request the page makes:
  local ones are served from the build and logged with their status, any request for another
  host is logged as external and refused (the test asserts there are none);
* into each HTML page it serves it injects a probe script: at the start of ``<head>`` a listener
  that records failed loads and script errors, at the end of ``<body>`` a routine that waits for
  MathJax and the widget manager to finish and writes a JSON report into the DOM;
* ``chromium --headless --dump-dom --virtual-time-budget=...`` prints the final DOM, from which
  the report is read back; a second run with ``--screenshot`` saves a picture of the page.
"""
from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--no-pings",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-field-trial-config",
    "--metrics-recording-only",
    "--password-store=basic",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,"
    "PrivacySandboxSettings4,DialMediaRouteProvider,AccountConsistency,SigninInterception",
    # no DNS for any name: nothing can leave the machine even if the proxy were bypassed
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]

PROBE_HEAD = """<script>
window.__diffeduFailures = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) {
    window.__diffeduFailures.push({kind: 'resource', url: t.src || t.href, tag: t.tagName});
  } else {
    window.__diffeduFailures.push({kind: 'script', message: String(e.message), source: String(e.filename || '')});
  }
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__diffeduFailures.push({kind: 'promise', message: String(e.reason && (e.reason.stack || e.reason))});
});
</script>"""

PROBE_BODY = """<script>
(function () {
  // move the first slider through its own widget (noUiSlider's API, as a reader's drag would) and
  // record which image is visible before and after: a slider linked in the browser (jslink to a
  // Stack) must change the figure without a kernel
  function visibleImages() {
    return Array.prototype.filter.call(document.querySelectorAll('.jupyter-widgets img'), function (img) {
      var r = img.getBoundingClientRect();
      return r.width > 0 && r.height > 0;
    }).map(function (img) { return (img.src || '').length + ':' + (img.src || '').slice(-40); });
  }
  function moveSlider(done) {
    var handle = document.querySelector('.widget-slider .noUi-handle, .widget-hslider .noUi-handle');
    var target = handle && handle.closest('.noUi-target');
    if (!target || !target.noUiSlider) { done(null); return; }
    var out = {before: visibleImages()};
    var v = Number(target.noUiSlider.get());
    target.noUiSlider.set(v === 0 ? 1 : 0);
    setTimeout(function () { out.after = visibleImages(); done(out); }, 800);
  }

  var sliderResult = null;
  function report() {
    var imgs = Array.prototype.map.call(document.querySelectorAll('img'), function (img) {
      return {src: (img.currentSrc || img.src || '').slice(0, 120), complete: img.complete,
              naturalWidth: img.naturalWidth, visibleWidth: img.getBoundingClientRect().width};
    });
    var resources = performance.getEntriesByType('resource').map(function (r) {
      return {url: r.name.slice(0, 300), status: r.responseStatus === undefined ? null : r.responseStatus};
    });
    // prose left as TeX after MathJax ran: text outside code, math, outputs and scripts
    var SKIP = 'pre, code, script, style, mjx-container, .math, .cell_output, .output, .highlight, ' +
               '.MathJax, mjx-assistive-mml, .headerlink, nav, .bd-sidebar-primary, .bd-sidebar-secondary';
    var TEX = /(\\$|\\\\(?:alpha|beta|gamma|sigma|lambda|mathcal|mathbb|mathrm|frac|sqrt|nabla|mid|left|right|begin|end|sum|int|log|exp|bar|tilde|hat|text|operatorname|partial|epsilon|varepsilon|theta|mu|top|in|le|ge|cdot|times|infty|to)\\b|\\^\\{|_\\{)/;
    var raw = [];
    var root = document.querySelector('main') || document.body;
    var walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, null);
    var node;
    while ((node = walker.nextNode())) {
      var el = node.parentElement;
      if (!el || el.closest(SKIP)) continue;
      var txt = node.nodeValue;
      var m = TEX.exec(txt);
      if (m) raw.push(txt.slice(Math.max(0, m.index - 30), m.index + 40).replace(/\\s+/g, ' '));
    }
    var mathErrors = document.querySelectorAll('mjx-merror, [data-mjx-error], .MathJax_Error').length;
    // code that does not fit the column: an input cell's <pre> wider than its box
    var wide = Array.prototype.filter.call(document.querySelectorAll('.cell_input pre, div.highlight pre'), function (el) {
      return el.scrollWidth > el.clientWidth + 2;
    }).map(function (el) {
      var longest = el.textContent.split('\\n').reduce(function (a, b) { return b.length > a.length ? b : a; }, '');
      return longest.slice(0, 100);
    });
    var out = {
      raw_tex: raw,
      math_errors: mathErrors,
      wide_code: wide,
      url: location.href,
      title: document.title,
      mathjax_loaded: !!(window.MathJax && window.MathJax.startup),
      mjx_containers: document.querySelectorAll('mjx-container').length,
      math_nodes: document.querySelectorAll('.math').length,
      untypeset_math: Array.prototype.filter.call(document.querySelectorAll('.math'), function (n) {
        return !n.querySelector('mjx-container');
      }).length,
      images: imgs,
      widget_state_scripts: document.querySelectorAll('script[type="application/vnd.jupyter.widget-state+json"]').length,
      widget_view_scripts: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
      widget_views: document.querySelectorAll('.jupyter-widgets, .widget-slider, .widget-hslider, .lm-Widget').length,
      widget_sliders: document.querySelectorAll('.widget-slider, .widget-hslider').length,
      animations: document.querySelectorAll('.animation').length,
      animation_buttons: document.querySelectorAll('.anim-buttons button').length,
      resources: resources,
      failures: window.__diffeduFailures,
      slider: sliderResult,
    };
    var pre = document.createElement('pre');
    pre.id = 'diffedu-probe';
    pre.style.display = 'none';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  function settled() {
    var mj = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
    return Promise.resolve(mj).catch(function () {});
  }
  window.addEventListener('load', function () {
    settled().then(function () {
      // give the widget manager (it renders after 'load') time to draw the views
      var tries = 0;
      (function poll() {
        var want = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
        var have = document.querySelectorAll('.jupyter-widgets').length;
        if ((want === 0 || have > 0) || tries++ > 50) {
          setTimeout(function () { moveSlider(function (r) { sliderResult = r; report(); }); }, 400);
        } else { setTimeout(poll, 100); }
      })();
    });
  });
})();
</script>"""


# Chromium's own background services (component updater, account lookup, network time) may
# reach out even with the flags above; those requests do not come from the page. They are still
# refused by the proxy, and reported separately.
BROWSER_SERVICE_HOSTS = (
    "update.googleapis.com", "accounts.google.com", "clients2.google.com",
    "clients1.google.com", "optimizationguide-pa.googleapis.com", "safebrowsingohttpgateway.googleapis.com",
    "content-autofill.googleapis.com", "edgedl.me.gvt1.com", "redirector.gvt1.com",
)


@dataclass
class Request:
    method: str
    url: str
    status: int
    external: bool


@dataclass
class _State:
    root: Path
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _make_handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):  # quiet
            pass

        def _record(self, url: str, status: int, external: bool) -> None:
            with state.lock:
                state.requests.append(Request(self.command, url, status, external))

        def do_CONNECT(self):  # https through the proxy: always external
            self._record("https://" + self.path, 403, True)
            self.send_error(403, "offline test: external host refused")

        def do_GET(self):
            host, port = self.server.server_address[:2]
            parts = urlsplit(self.path)
            if self.path.endswith("/favicon.ico") and not (state.root / "favicon.ico").exists():
                # browsers ask for /favicon.ico on their own; the book's icon is declared in the page
                self.send_error(404)
                return
            if parts.scheme:  # absolute-URI form: request came through the proxy
                local = parts.hostname in ("127.0.0.1", "localhost") and (parts.port or 80) == port
                url = self.path
                if not local:
                    self._record(url, 403, True)
                    self.send_error(403, "offline test: external host refused")
                    return
            else:
                url = f"http://{host}:{port}{self.path}"
            path = unquote(parts.path)
            target = (state.root / path.lstrip("/")).resolve()
            if target.is_dir():
                target = target / "index.html"
            if state.root not in target.parents and target != state.root or not target.is_file():
                self._record(url, 404, False)
                self.send_error(404)
                return
            data = target.read_bytes()
            ctype = _content_type(target)
            if ctype.startswith("text/html"):
                text = data.decode("utf-8")
                text = re.sub(r"(<head[^>]*>)", lambda m: m.group(1) + PROBE_HEAD, text, count=1)
                text = text.replace("</body>", PROBE_BODY + "</body>", 1)
                data = text.encode("utf-8")
            self._record(url, 200, False)
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_HEAD = do_GET

        def do_POST(self):
            self._record(self.path, 405, not self.path.startswith("/"))
            self.send_error(405)

    return Handler


_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "application/javascript", ".css": "text/css",
    ".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".gif": "image/gif",
    ".json": "application/json", ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf",
    ".eot": "application/vnd.ms-fontobject", ".ico": "image/x-icon", ".txt": "text/plain",
    ".ipynb": "application/json", ".inv": "application/octet-stream",
}


def _content_type(path: Path) -> str:
    return _TYPES.get(path.suffix.lower(), "application/octet-stream")


def _is_browser_service(url: str) -> bool:
    host = urlsplit(url if "://" in url else "https://" + url).hostname or ""
    return host in BROWSER_SERVICE_HOSTS


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@dataclass
class PageReport:
    page: str
    probe: dict
    requests: list[Request]
    screenshot: Path | None = None

    @property
    def external_requests(self) -> list[Request]:
        """Requests for any non-local host, except Chromium's own background services."""
        return [r for r in self.requests if r.external and not _is_browser_service(r.url)]

    @property
    def browser_service_requests(self) -> list[Request]:
        return [r for r in self.requests if r.external and _is_browser_service(r.url)]

    @property
    def failed_local_requests(self) -> list[Request]:
        return [r for r in self.requests if not r.external and r.status != 200]


@contextlib.contextmanager
def serve(root: Path):
    """Serve ``root`` on 127.0.0.1 (file server + logging proxy); yields (port, state)."""
    state = _State(root=Path(root).resolve())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()


def _chromium(chromium: str, port: int, profile: str, extra: list[str], url: str, timeout: float) -> str:
    cmd = [
        chromium, *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--proxy-server=http://127.0.0.1:{port}",
        "--proxy-bypass-list=<-loopback>",
        *extra, url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def check_pages(
    html_root: Path,
    pages: list[str],
    screenshot_dir: Path | None = None,
    chromium: str | None = None,
    budget_ms: int = 30000,
    timeout: float = 180.0,
) -> list[PageReport]:
    """Load each page (path relative to ``html_root``) and return what the probe saw."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    reports = []
    with serve(html_root) as (port, state), tempfile.TemporaryDirectory(prefix="diffedu-chromium-") as tmp:
        for page in pages:
            url = f"http://127.0.0.1:{port}/{page}"
            with state.lock:
                state.requests.clear()
            profile = os.path.join(tmp, "profile-" + re.sub(r"\W", "_", page))
            dom = _chromium(chromium, port, profile, [f"--virtual-time-budget={budget_ms}", "--dump-dom"], url, timeout)
            with state.lock:
                requests = list(state.requests)
            match = re.search(r'<pre id="diffedu-probe"[^>]*>(.*?)</pre>', dom, re.S)
            probe = json.loads(html.unescape(match.group(1))) if match else {"error": "probe did not report", "dom_tail": dom[-3000:]}
            shot = None
            if screenshot_dir is not None:
                screenshot_dir.mkdir(parents=True, exist_ok=True)
                shot = screenshot_dir / (re.sub(r"[^\w.-]", "_", page.rsplit(".", 1)[0]) + ".png")
                _chromium(chromium, port, profile + "-shot",
                          [f"--virtual-time-budget={budget_ms}", "--window-size=1280,2400", f"--screenshot={shot}"],
                          url, timeout)
            reports.append(PageReport(page, probe, requests, shot))
    return reports


def problems(report: PageReport, *, expect_math=True, expect_figures=True, expect_widgets=False,
             expect_animation=False) -> list[str]:
    """Everything wrong with one page, as readable lines (empty list: the page is fine)."""
    p, out = report.probe, []
    if "error" in p:
        return [f"{report.page}: {p['error']}"]
    for r in report.external_requests:
        out.append(f"{report.page}: request to a non-local host: {r.url}")
    for r in report.failed_local_requests:
        out.append(f"{report.page}: local resource answered {r.status}: {r.url}")
    for f in p["failures"]:
        out.append(f"{report.page}: browser reported a failure: {f}")
    for r in p["resources"]:
        if r["status"] not in (None, 200) and not r["url"].startswith("data:"):
            out.append(f"{report.page}: resource status {r['status']}: {r['url']}")
    if expect_math:
        if not p["mathjax_loaded"]:
            out.append(f"{report.page}: MathJax did not load")
        if p["mjx_containers"] == 0:
            out.append(f"{report.page}: no math typeset by MathJax (no mjx-container)")
        if p["untypeset_math"]:
            out.append(f"{report.page}: {p['untypeset_math']} math nodes left untypeset")
    if p.get("math_errors"):
        out.append(f"{report.page}: {p['math_errors']} MathJax error elements")
    for frag in p.get("raw_tex", [])[:10]:
        out.append(f"{report.page}: raw TeX in the prose: ...{frag}...")
    if len(p.get("raw_tex", [])) > 10:
        out.append(f"{report.page}: ... {len(p['raw_tex']) - 10} more raw TeX fragments")
    for line in p.get("wide_code", [])[:5]:
        out.append(f"{report.page}: code wider than the column (scrolls sideways): {line!r}")
    if len(p.get("wide_code", [])) > 5:
        out.append(f"{report.page}: ... {len(p['wide_code']) - 5} more code blocks wider than the column")
    if expect_figures:
        imgs = [i for i in p["images"] if not i["src"].endswith(".svg")]
        if not imgs:
            out.append(f"{report.page}: no figures")
        for i in p["images"]:
            if not i["complete"] or i["naturalWidth"] == 0:
                # the animation player's <img> is filled by script; only flag real images
                if i["src"]:
                    out.append(f"{report.page}: image not drawn: {i['src']}")
    if expect_widgets:
        if p["widget_state_scripts"] == 0 or p["widget_view_scripts"] == 0:
            out.append(f"{report.page}: no embedded widget state / views")
        if p["widget_views"] == 0 or p["widget_sliders"] == 0:
            out.append(f"{report.page}: widget views not rendered by the HTML manager "
                       f"({p['widget_views']} views, {p['widget_sliders']} sliders)")
    moved = p.get("slider")
    if moved is not None and (not moved.get("before") or moved.get("before") == moved.get("after")):
        out.append(f"{report.page}: moving the slider did not change the figure (no kernel: it must be linked "
                   "in the browser, e.g. diffedu.notebook.slider)")
    if expect_widgets and p["widget_sliders"] and moved is None:
        out.append(f"{report.page}: a slider is shown but could not be moved")
    if expect_animation and (p["animations"] == 0 or p["animation_buttons"] == 0):
        out.append(f"{report.page}: no animation player controls")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check built book pages in headless Chromium, offline.")
    parser.add_argument("html_root", type=Path)
    parser.add_argument("pages", nargs="+")
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args(argv)
    reports = check_pages(args.html_root, args.pages, args.screenshots)
    bad = []
    for rep in reports:
        print(json.dumps({k: v for k, v in rep.probe.items() if k not in ("resources", "images")}, indent=1))
        bad += problems(rep, expect_figures=False)
    print("\n".join(bad) or "all pages fine")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

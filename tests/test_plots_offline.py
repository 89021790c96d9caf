"""`dvc plots show` draws with no network: its page (the template .dvc/plots/offline/index.html, .dvc/config:
plots.html_template) carries vega, vega-lite and vega-embed inline. Headless Chromium, with every host name made
unresolvable, opens the page dvc writes and every plot of dvc.yaml must draw; DVC's default page (scripts from a
CDN) is the control: there, nothing draws."""
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from incres.report import find_chromium

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT/'.dvc'/'plots'/'offline'
needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason='headless Chromium not installed (apt-get install -y chromium)')

# Injected first into a copy of the page: records errors (script load failures included), then, once the page has
# loaded, waits for each plot's container to hold a drawn canvas or svg and writes what it found into <body>.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(
  e.message || ('failed to load ' + ((e.target && (e.target.src || e.target.href)) || 'a resource'))), true);
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.map(String).join(' ')); __consoleError(...args); };
function __plot(div) {
  const el = div.querySelector('canvas, svg');
  if (!el) return {id: div.id, drawn: false};
  const box = el.getBoundingClientRect();
  let coloured = 0;  // data marks are coloured; axes, labels and the background are grey, black or white
  if (el.tagName.toLowerCase() === 'canvas' && el.width && el.height) {
    const px = el.getContext('2d').getImageData(0, 0, el.width, el.height).data;
    for (let i = 0; i < px.length; i += 4) {
      const [r, g, b, a] = [px[i], px[i + 1], px[i + 2], px[i + 3]];
      if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 50) coloured++;
    }
  } else coloured = el.querySelectorAll('path[stroke]:not([stroke="#888"])').length;
  return {id: div.id, drawn: true, width: box.width, height: box.height, coloured: coloured};
}
window.addEventListener('load', () => {
  let tries = 0;
  const check = () => {
    const plots = Array.from(document.querySelectorAll('body > div[id]')).map(__plot);
    if (plots.every(p => p.drawn && p.coloured > 0) || ++tries > 80)
      document.body.setAttribute('data-probe', JSON.stringify({plots: plots, errors: window.__errors}));
    else setTimeout(check, 100);
  };
  check();
});
</script>"""

FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync',
         '--host-resolver-rules=MAP * ~NOTFOUND',  # offline: no host name resolves
         '--virtual-time-budget=15000', '--window-size=1200,1600', '--enable-logging=stderr', '--v=0']


def plots_show(out_dir: Path, *args) -> Path:
    "Run `dvc plots show` in the checkout, writing into `out_dir`; returns the page."
    out = subprocess.run([sys.executable, '-m', 'dvc', 'plots', 'show', '-o', str(out_dir), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out_dir/'index.html'


def render(page: Path, timeout: float = 120) -> tuple[dict, list[str]]:
    "Open a probed copy of `page` in headless Chromium: (what the probe found, console error lines Chromium logged)."
    probed = page.with_name('probed.html')
    text = page.read_text(encoding='utf-8')
    probed.write_text(text.replace('<head>', '<head>\n' + PROBE, 1), encoding='utf-8')
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([find_chromium(), *FLAGS, f'--user-data-dir={profile}', '--dump-dom', probed.as_uri()],
                             capture_output=True, text=True, timeout=timeout)
    found = re.search(r'<body[^>]*\sdata-probe="([^"]*)"', out.stdout)
    if found is None: raise RuntimeError(f'{page}: the page did not finish loading in Chromium\n{out.stderr[-2000:]}')
    probe = json.loads(found.group(1).replace('&quot;', '"').replace('&amp;', '&'))
    logged = [l for l in out.stderr.splitlines() if 'CONSOLE' in l
              and re.search(r'Uncaught|Failed to load|net::ERR|is not defined', l)]
    return probe, logged


def dvc_yaml_plots() -> list[str]:
    "The ids DVC gives the plots of dvc.yaml's `plots:` section (its names, special characters replaced by _)."
    names = [next(iter(p)) for p in yaml.safe_load((ROOT/'dvc.yaml').read_text())['plots']]
    return [name.translate({ord(c): '_' for c in r"!@#$%^&*()[]{};,<>?\/:.|`~=_+ "}) for name in names]


def test_template_is_the_vendored_scripts_of_dvcs_versions():
    "The template inlines, byte for byte, the scripts of the versions DVC's own page loads, with their licenses."
    from dvc_render.vega import VegaRenderer
    page = (OFFLINE/'index.html').read_text(encoding='utf-8')
    scripts = re.findall(r'<script data-package="([^"]+)" data-file="([^"]+)" data-sha256="([0-9a-f]{64})">(.*?)'
                         r'</script>', page, re.S)
    assert [s[0].split('@')[0] for s in scripts] == ['vega', 'vega-lite', 'vega-embed']
    for spec, _, sha, js in scripts:
        assert hashlib.sha256(js.encode('utf-8')).hexdigest() == sha
        assert f'npm/{spec}"' in VegaRenderer.SCRIPTS, f'dvc-render now loads another {spec}: make plots-template'
        assert 'Redistribution and use' in (OFFLINE/f'LICENSE.{spec.split("@")[0]}').read_text()  # BSD-3-Clause
    assert '{plot_divs}' in page and '{scripts}' not in page and not re.search(r'<script[^>]*\ssrc=', page)
    spec = importlib.util.spec_from_file_location('build_offline', OFFLINE/'build.py')
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.dvc_versions() == [s[0] for s in scripts]


@needs_chromium
def test_dvc_plots_show_draws_offline(tmp_path):
    page = plots_show(tmp_path/'plots')
    html = page.read_text(encoding='utf-8')
    assert 'cdn.jsdelivr.net' not in html and not re.search(r'<script[^>]*\ssrc=', html)
    probe, logged = render(page)
    ids = dvc_yaml_plots()
    assert [p['id'] for p in probe['plots']] == ids and len(ids) == 2
    for p in probe['plots']:
        assert p['drawn'] and p['width'] > 100 and p['height'] > 100 and p['coloured'] > 50, p
    assert probe['errors'] == [] and logged == []


@needs_chromium
def test_dvcs_default_page_draws_nothing_offline(tmp_path):
    "The control: DVC's own page loads the scripts from a CDN, so offline the same check finds no plot drawn."
    from dvc_render.html import PAGE_HTML
    template = tmp_path/'cdn.html'
    template.write_text(PAGE_HTML, encoding='utf-8')
    page = plots_show(tmp_path/'plots', '--html-template', str(template))
    assert 'cdn.jsdelivr.net' in page.read_text(encoding='utf-8')
    probe, logged = render(page)
    assert len(probe['plots']) == 2 and not any(p['drawn'] for p in probe['plots'])
    assert any('vegaEmbed is not defined' in e for e in probe['errors'])
    assert any('failed to load' in e for e in probe['errors']) or logged

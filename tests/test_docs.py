"""The documentation site (`make docs`, .ci/docs.py): every notebook under nbs/ is one page, index.ipynb links them
all, and in headless Chromium (no network) every page loads, every image renders and every internal link reaches an
existing file (same-page anchors: an element with that id). A small notebook tree with a subfolder checks the
relative links between folders."""
import base64
import html
import importlib.util
import io
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from incres.report import find_chromium

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('incres_docs', ROOT/'.ci'/'docs.py')
docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs)

needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason='headless Chromium not installed (apt-get install -y chromium)')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync',
         '--host-resolver-rules=MAP * ~NOTFOUND',  # offline: the pages must not need the network
         '--virtual-time-budget=10000', '--window-size=1200,1600']

# Injected first into a copy of each page (beside it, so relative links resolve the same): once the page has loaded,
# sends its title, images, links and same-page anchors without a target to the harness page that holds it in a frame.
PROBE = """<script>
window.addEventListener('load', () => {
  const links = Array.from(document.querySelectorAll('a[href]'));
  const here = location.href.split('#')[0];
  const target = hash => document.getElementById(hash) || document.getElementById(decodeURIComponent(hash));
  const missing = links.filter(a => a.href.startsWith(here + '#') && a.hash.length > 1 && !target(a.hash.slice(1)))
    .map(a => a.getAttribute('href'));  // a fragment names an id as it is, else percent-decoded (HTML spec)
  parent.postMessage({
    page: here, title: document.title,
    images: Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 40),
                                                    width: i.complete ? i.naturalWidth : 0})),
    links: links.map(a => a.href), missing_anchors: missing,
    nav: document.querySelectorAll('nav.incres-nav a').length}, '*');
});
</script>"""
# Opens every probed page in a frame (one Chromium for the whole site) and writes what they sent into <body>.
HARNESS = """<!doctype html><html><head><meta charset="utf-8"></head><body><script>
const pages = %s, results = {};
addEventListener('message', e => {
  results[e.data.page] = e.data;
  document.body.setAttribute('data-probe', JSON.stringify(results));
});
for (const p of pages) { const f = document.createElement('iframe'); f.src = p; document.body.appendChild(f); }
</script></body></html>"""
PREFIX = '.probe-'


def probe(site: Path, pages: list[Path], timeout: float = 300) -> dict:
    "Open probed copies of `pages` (files under `site`) in headless Chromium: {page: what its probe found}."
    probed = [page.with_name(PREFIX + page.name) for page in pages]
    harness = site/f'{PREFIX}harness.html'
    try:
        for page, copy in zip(pages, probed):
            copy.write_text(page.read_text(encoding='utf-8').replace('<head>', '<head>\n' + PROBE, 1), encoding='utf-8')
        harness.write_text(HARNESS % json.dumps([c.relative_to(site).as_posix() for c in probed]), encoding='utf-8')
        with tempfile.TemporaryDirectory() as profile:
            out = subprocess.run([find_chromium(), *FLAGS, f'--user-data-dir={profile}', '--dump-dom',
                                  harness.as_uri()], capture_output=True, text=True, timeout=timeout)
    finally:
        for path in [harness, *probed]: path.unlink(missing_ok=True)
    found = re.search(r'<body[^>]*\sdata-probe="([^"]*)"', out.stdout)
    results = json.loads(html.unescape(found.group(1))) if found else {}
    missing = [str(page) for page, copy in zip(pages, probed) if copy.as_uri() not in results]
    if missing: raise AssertionError(f'pages that did not finish loading in Chromium: {missing}\n{out.stderr[-2000:]}')
    return {page: results[copy.as_uri()] for page, copy in zip(pages, probed)}


def broken(site: Path, pages: list[Path]) -> tuple[dict, list[str]]:
    "Open every page: (probe per page, what is wrong with them)."
    found = probe(site, pages)
    problems = []
    for page, p in found.items():
        name = page.relative_to(site).as_posix()
        problems += [f'{name}: image {i["src"]}... did not render' for i in p['images'] if not i['width'] > 0]
        problems += [f'{name}: no element with the id of the link {a}' for a in p['missing_anchors']]
        for url in p['links']:
            parts = urlsplit(url)
            if parts.scheme != 'file': continue  # external links are not part of the site
            target = Path(unquote(parts.path))
            target = target.with_name(target.name.removeprefix(PREFIX))  # a link to the page itself
            if not target.is_file(): problems.append(f'{name}: link to {url} ({target} does not exist)')
            elif site.resolve() not in target.resolve().parents: problems.append(f'{name}: link out of the site {url}')
    return found, problems


def test_index_links_every_notebook():
    "The landing page lists every notebook in nbs/ (a new notebook must be added to its reading order)."
    pages = docs.notebooks(docs.NBS)
    order = docs.reading_order(nbformat.read(docs.NBS/'index.ipynb', as_version=4), pages)
    unlisted = [str(p) for group, _, p in order if group == docs.OTHER]
    assert unlisted == [], f'add these to the reading order in nbs/index.ipynb: {unlisted}'
    assert sorted(p for _, _, p in order) == sorted(p for p in pages if p.name != 'index.ipynb')
    assert 'default_exp' not in (docs.NBS/'index.ipynb').read_text()  # the landing page exports nothing


def png() -> str:
    "A 2×1 red PNG, base64."
    from PIL import Image
    buf = io.BytesIO()
    Image.new('RGB', (2, 1), 'red').save(buf, 'PNG')
    return base64.b64encode(buf.getvalue()).decode()


def small_tree(nbs: Path) -> None:
    """index → a, sub/b; b links back to a's heading and to a missing notebook and image; a shows a PNG, has a hidden
    cell and a directive line."""
    def write(rel, *cells):
        (nbs/rel).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(new_notebook(cells=list(cells)), nbs/rel)
    write('index.ipynb', new_markdown_cell('# Site\n\n## Start\n\n- [The `a` page](a.ipynb)\n\n## Deeper\n\n'
                                           '- [B](sub/b.ipynb): in a folder'))
    plot = new_code_cell('#| export\nplot()')
    plot.outputs = [new_output('display_data', {'image/png': png(), 'text/plain': '<Figure>'})]
    write('a.ipynb', new_markdown_cell('# Page A\n\n## Section one\n\nSee [B](sub/b.ipynb#Bee).'),
          new_code_cell('#| hide\nsecret = 1'), plot)
    write('sub/b.ipynb', new_markdown_cell('# Page B\n\n## Bee\n\nBack to [A](../a.ipynb#Section-one), '
                                           '[here](#Bee), [nowhere](missing.ipynb).\n\n![gone](gone.png)'))
    write('_draft.ipynb', new_markdown_cell('# not rendered'))


def test_small_tree_pages(tmp_path):
    small_tree(tmp_path/'nbs')
    written = docs.build(tmp_path/'site', tmp_path/'nbs', log=None)
    site = tmp_path/'site'
    assert sorted(p.relative_to(site).as_posix() for p in written) == ['a.html', 'index.html', 'sub/b.html']
    a, b = (site/'a.html').read_text(), (site/'sub'/'b.html').read_text()
    assert 'href="sub/b.html#Bee"' in a and 'secret' not in a and '#| export' not in a and 'plot</span>' in a
    assert 'href="../a.html#Section-one"' in b and 'href="missing.ipynb"' in b  # no such notebook: left as it is
    nav = re.search(r'<nav class="incres-nav".*?</nav>', b, re.S).group(0)
    assert re.findall(r'href="([^"]+)"', nav) == ['../index.html', '../a.html', 'b.html']
    assert '<h2>Start</h2>' in nav and '<a href="b.html" aria-current="page">B</a>' in nav
    assert '<code>a</code>' in nav and '<title>Page B · incres</title>' in b


@needs_chromium
def test_small_tree_in_chromium(tmp_path):
    "The probe sees the image, the links across folders, and catches the broken link and image, nothing else."
    small_tree(tmp_path/'nbs')
    site = tmp_path/'site'
    pages = docs.build(site, tmp_path/'nbs', log=None)
    found, problems = broken(site, pages)
    assert [i['width'] for i in found[site/'a.html']['images']] == [2]
    assert found[site/'sub'/'b.html']['nav'] == 3 and found[site/'sub'/'b.html']['title'] == 'Page B · incres'
    assert len(problems) == 2, problems
    assert problems[0] == 'sub/b.html: image gone.png... did not render'
    assert problems[1].startswith('sub/b.html: link to file://') and 'sub/missing.ipynb (' in problems[1]


@needs_chromium
def test_docs_site_in_chromium(tmp_path):
    "The whole site (2 busy cores: 20 s to render, 5 s to open): every page loads, renders and links."
    start = time.perf_counter()
    site = tmp_path/'_docs'
    pages = docs.build(site, log=None)
    rendered = time.perf_counter() - start
    notebooks = docs.notebooks(docs.NBS)
    assert sorted(pages) == sorted(site/p.with_suffix('.html') for p in notebooks)
    found, problems = broken(site, pages)
    assert problems == []
    assert all(p['nav'] == len(notebooks) for p in found.values())  # the sidebar: home + every other notebook
    assert found[site/'index.html']['title'] == 'incres'
    assert len(found[site/'02_theory.html']['images']) >= 4  # the executed notebooks' figures are in the pages
    index_links = {Path(unquote(urlsplit(u).path)).name for u in found[site/'index.html']['links']}
    assert {p.with_suffix('.html').name for p in notebooks} <= index_links
    print(f'{len(pages)} pages rendered in {rendered:.0f} s, checked in {time.perf_counter() - start - rendered:.0f} s')

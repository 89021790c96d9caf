"""Builds index.html, the HTML template `dvc plots show` fills (.dvc/config: plots.html_template), with vega, vega-lite
and vega-embed inlined, so that the page draws with no network and from whatever folder it is written to.

DVC's own page loads the three scripts from a CDN (dvc_render.vega.VegaRenderer.SCRIPTS); this takes the same
versions from the npm registry (`npm pack`), inlines each package's build/<name>.min.js byte for byte (a `data-sha256`
attribute on each <script> records its checksum) and copies each package's LICENSE beside the template.
Run it again (`make plots-template`) when an upgrade of dvc-render changes the versions; tests/test_plots_offline.py
says when it has.

    python .dvc/plots/offline/build.py [--versions vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2]
"""
import argparse
import hashlib
import io
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = ('vega', 'vega-lite', 'vega-embed')  # in load order: vega-embed needs both others

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- The template of `dvc plots show` (.dvc/config: plots.html_template), made by build.py beside it: DVC's own
         page, with these scripts inlined from their npm packages instead of loaded from a CDN:
         {names} (BSD-3-Clause: LICENSE.<package> beside this file). -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def dvc_versions() -> list[str]:
    "`name@version` of the scripts DVC's page loads, from the installed dvc-render."
    from dvc_render.vega import VegaRenderer
    found = dict(re.findall(r'npm/([a-z-]+)@([0-9][^"\s/]*)', VegaRenderer.SCRIPTS))
    return [f'{name}@{found[name]}' for name in PACKAGES]


def npm_pack(spec: str, folder: Path) -> Path:
    "Download the package tarball `spec` (name@version) from the npm registry into `folder`."
    out = subprocess.run(['npm', 'pack', '--silent', spec], cwd=folder, capture_output=True, text=True, check=True)
    return folder/out.stdout.strip().splitlines()[-1]


def member(tgz: Path, path: str) -> bytes:
    with tarfile.open(tgz) as tar: return tar.extractfile(f'package/{path}').read()


def build(specs: list[str], out_dir: Path = HERE) -> Path:
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            name = spec.rsplit('@', 1)[0]
            tgz = npm_pack(spec, Path(tmp))
            js = member(tgz, f'build/{name}.min.js').decode('utf-8')
            for bad in ('</script', '{plot_divs}', '{scripts}', '{refresh_tag}'):  # would break the page or DVC's fill
                if bad in js: raise ValueError(f'{spec}: build/{name}.min.js contains {bad!r}')
            (out_dir/f'LICENSE.{name}').write_bytes(member(tgz, 'LICENSE'))
            sha = hashlib.sha256(js.encode('utf-8')).hexdigest()
            scripts.append(f'    <script data-package="{spec}" data-file="build/{name}.min.js" data-sha256="{sha}">'
                           f'{js}</script>')
    page = PAGE.format(names=', '.join(specs), scripts='\n'.join(scripts))
    (out_dir/'index.html').write_text(page, encoding='utf-8')
    return out_dir/'index.html'


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--versions', nargs=3, metavar='NAME@VERSION',
                        help='default: those of the installed dvc-render')
    args = parser.parse_args()
    print(build(args.versions or dvc_versions()))

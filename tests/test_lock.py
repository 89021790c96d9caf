"""The lock file (requirements.lock, `make lock`) agrees with settings.ini: every requirement of the library and of
the dev environment is pinned there, at a version its specifier allows."""
import re
import shlex
from configparser import ConfigParser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT/'requirements.lock'


def settings_requirements(path=ROOT/'settings.ini') -> list[Requirement]:
    "settings.ini's `requirements` and `dev_requirements`, parsed as setup.py does."
    config = ConfigParser(delimiters=['='])
    config.read(path, encoding='utf-8')
    cfg = config['DEFAULT']
    return [Requirement(r) for key in ('requirements', 'dev_requirements') for r in shlex.split(cfg.get(key, ''))]


def parse_lock(text: str) -> dict[str, Version]:
    "`{canonical name: version}` of a pip-compile output; fails on any requirement line that is not `name==version`."
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith('#'): continue
        req = Requirement(line.split(' #')[0].strip())
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == '==' and not req.url, f'not an exact pin: {line!r}'
        pins[canonicalize_name(req.name)] = Version(spec[0].version)
    return pins


def disagreements(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    "Requirements missing from the lock or pinned at a version their specifier refuses (markers respected)."
    out = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate(): continue
        have = pins.get(canonicalize_name(req.name))
        if have is None: out.append(f'{req}: not in the lock')
        elif not req.specifier.contains(have, prereleases=True): out.append(f'{req}: the lock has {have}')
    return out


def test_settings_and_lock_agree():
    problems = disagreements(settings_requirements(), parse_lock(LOCK.read_text()))
    assert not problems, 'settings.ini and requirements.lock disagree; run `make lock`:\n' + '\n'.join(problems)


def test_the_check_catches_a_disagreement():
    pins = {'numpy': Version('2.3.1'), 'torch': Version('2.14.1')}
    reqs = [Requirement(r) for r in ('numpy<2', 'torch>=2.2', 'Py_YAML', 'tqdm; python_version < "3"')]
    assert disagreements(reqs, pins) == ['numpy<2: the lock has 2.3.1', 'Py_YAML: not in the lock']
    with pytest.raises(AssertionError, match='not an exact pin'): parse_lock('numpy>=2\n')


def test_lock_pins_what_the_makefile_says_and_nothing_local():
    text = LOCK.read_text()
    pins = parse_lock(text)
    makefile = (ROOT/'Makefile').read_text()
    wanted = re.search(r'^LOCK_PINS := (.*)$', makefile, re.M).group(1).split()
    assert wanted and all(pins[canonicalize_name(n)] == Version(v) for n, v in (w.split('==') for w in wanted))
    assert 'incres' not in pins  # the library itself is installed from the checkout (--no-deps -e .)
    assert 'pip' in pins and 'setuptools' in pins  # --allow-unsafe: the installer and the build backend too
    # no index, find-links or path of the machine that ran `make lock`
    options = [l for l in text.splitlines() if l.startswith('-') or re.search(r'file:/|/opt/|/home/|/tmp/', l)]
    assert not options, options
    assert '#    make lock\n' in text[:400]  # pip-compile's header names the command that made it

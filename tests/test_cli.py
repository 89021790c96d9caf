"""The `incres` command line on what a user gets wrong: every failure is ONE line `incres: error: …` naming the file
and the fix, a non-zero exit status and no traceback, found before any source is read or any data loads; a reader
that goes away (`| head -1`) ends the command quietly."""
import errno
import os
import subprocess
import sys

import pytest

import incres.data as data
from incres.cli import main


def one_line_error(capsys, argv, *words):
    "Run `incres argv` in-process; check the exit status and that stderr is one error line holding `words`."
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code != 0, err
    assert err.count('\n') == 1 and err.endswith('\n'), err
    assert err.startswith('incres: error: '), err
    assert 'Traceback' not in err, err
    for w in words: assert str(w) in err, (w, err)
    return err.rstrip('\n')


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    "An empty working directory, and a test failure should anything try to read a source or load data."
    monkeypatch.chdir(tmp_path)
    def must_not_run(*args, **kw): raise AssertionError('read data before checking the arguments')
    for name in ('read_source', 'read_path', 'load_split', 'make_loaders'):
        monkeypatch.setattr(data, name, must_not_run)


# ----------------------------------------------------------------------------------------------- data prepare
def test_prepare_root_is_a_file(tmp_path, capsys, no_data):
    (tmp_path / 'afile').write_text('x')
    err = one_line_error(capsys, ['data', 'prepare', 'cifar10', '--root', tmp_path / 'afile'])
    assert err == (f'incres: error: cannot write prepared data to {tmp_path}/afile: it is a file, not a folder: '
                   'pass a folder as --root')
    err = one_line_error(capsys, ['data', 'prepare', '--all', '--root', tmp_path / 'afile' / 'data'])
    assert err == (f'incres: error: cannot write prepared data to {tmp_path}/afile/data: {tmp_path}/afile is a file, '
                   'not a folder: pass a folder as --root')
    assert (tmp_path / 'afile').read_text() == 'x'


def test_prepare_root_not_writable(tmp_path, capsys, no_data, monkeypatch):
    (tmp_path / 'locked').mkdir()
    monkeypatch.setattr(data.os, 'access', lambda path, mode: False)  # as root, chmod would not lock anything
    one_line_error(capsys, ['data', 'prepare', 'fashion_mnist', '--root', tmp_path / 'locked' / 'data'],
                   f'cannot write prepared data to {tmp_path}/locked/data: {tmp_path}/locked is not writable '
                   '(permission denied): pass another --root, or fix the permissions')
    class ReadOnly: f_flag = os.ST_RDONLY
    monkeypatch.setattr(data.os, 'statvfs', lambda path: ReadOnly)
    one_line_error(capsys, ['data', 'prepare', 'cifar10', '--root', tmp_path / 'locked'],
                   f'{tmp_path}/locked is on a read-only file system: pass another --root')
    assert not (tmp_path / 'locked' / 'data').exists()


@pytest.mark.skipif(os.name != 'posix' or os.geteuid() == 0, reason='root may write anywhere')
def test_prepare_root_without_permission(tmp_path, capsys, no_data):
    (tmp_path / 'locked').mkdir(mode=0o555)
    one_line_error(capsys, ['data', 'prepare', 'cifar10', '--root', tmp_path / 'locked'], 'permission denied')


def test_prepare_write_failure_is_one_line(tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kw): raise data.write_error(tmp_path / 'data' / 'cifar10', OSError(errno.ENOSPC, 'No space'))
    monkeypatch.setattr(data, 'prepare', full_disk)
    one_line_error(capsys, ['data', 'prepare', 'cifar10', '--root', tmp_path / 'data'],
                   f'cannot write {tmp_path}/data/cifar10: the disk is full: free some space or write somewhere else')


def test_other_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    def denied(*args, **kw): raise PermissionError(errno.EACCES, 'Permission denied', 'data/cifar10/provenance.json')
    monkeypatch.setattr(data, 'describe', denied)
    one_line_error(capsys, ['data', 'info', 'cifar10'], 'Permission denied', 'data/cifar10/provenance.json')


def test_info_of_a_broken_prepared_dataset(tmp_path, capsys):
    one_line_error(capsys, ['data', 'info', 'cifar10', '--root', tmp_path],
                   f'{tmp_path}/cifar10/provenance.json does not exist: run `incres data prepare cifar10`')
    (tmp_path / 'cifar10').mkdir()
    (tmp_path / 'cifar10' / 'provenance.json').write_text('{"dataset": "cifar10", ')
    one_line_error(capsys, ['data', 'info', 'cifar10', '--root', tmp_path],
                   f'{tmp_path}/cifar10/provenance.json is not valid JSON', 'run `incres data prepare cifar10` again')


# ----------------------------------------------------------------------------------------------- train CONFIG
def train(config, *extra): return ['train', str(config), '--out', 'run', *extra]


def test_config_yaml_syntax_error(tmp_path, capsys, no_data):
    cfg = tmp_path / 'exp.yaml'
    cfg.write_text('dataset: {name: synthetic}\nmodel:\n  depth: [20, 32\ntrain: {epochs: 3}\n')
    err = one_line_error(capsys, train(cfg), f'config file {cfg} is not valid YAML: ', 'at line 4, column 6',
                         'that starts at line 3, column 10', 'fix it there')
    assert err == (f"incres: error: config file {cfg} is not valid YAML: expected ',' or ']', but got ':' at line 4, "
                   "column 6 (while parsing a flow sequence that starts at line 3, column 10); fix it there")
    cfg.write_text('train:\n  epochs: 3\n\tseed: 1\n')  # a tab
    one_line_error(capsys, train(cfg), str(cfg), "found character '\\t' that cannot start any token at line 3")
    cfg.write_text('train: {epochs: 3}\nnote: "a \x07 bell"\n')  # a character YAML refuses
    one_line_error(capsys, train(cfg), str(cfg), 'special characters are not allowed (character #x0007) at line 2')


def test_set_value_yaml_syntax_error(tmp_path, capsys, no_data):
    cfg = tmp_path / 'exp.yaml'
    cfg.write_text('dataset: {name: synthetic}\n')
    err = one_line_error(capsys, train(cfg, '--set', 'optim.lr=[0.1'))
    assert err == ("incres: error: --set optim.lr=[0.1: the value is not valid YAML: expected ',' or ']', but got "
                   "'<stream end>' at column 5 (while parsing a flow sequence that starts at column 1); fix it, or "
                   "quote it (values are read as YAML: 0.1, [1, 2], true, null, 'text')")
    one_line_error(capsys, train(cfg, '--set', 'train.epochs=3', '--set', 'strategy.name="e2e'),
                   '--set strategy.name="e2e: the value is not valid YAML')
    one_line_error(capsys, train(cfg, '--set', 'optim.lr'), "an override must look like section.key=value")


def test_config_is_a_folder(tmp_path, capsys, no_data):
    (tmp_path / 'configs').mkdir()
    err = one_line_error(capsys, train(tmp_path / 'configs'))
    assert err == f'incres: error: config {tmp_path}/configs is a folder, not a file: pass the YAML file to use'


def test_config_not_utf8(tmp_path, capsys, no_data):
    cfg = tmp_path / 'latin1.yaml'
    cfg.write_bytes('train: {epochs: 3}  # café\n'.encode('latin-1'))
    err = one_line_error(capsys, train(cfg))
    assert err == (f'incres: error: config file {cfg} is not UTF-8 text (byte 0xe9 at offset 25); save it as UTF-8')


def test_config_not_a_mapping(tmp_path, capsys, no_data):
    cfg = tmp_path / 'list.yaml'
    for text, kind in (('- model\n- optim\n', 'list'), ('resnet20\n', 'str'), ('[]\n', 'list')):
        cfg.write_text(text)
        one_line_error(capsys, train(cfg), f'config file {cfg} holds a {kind}, not a mapping of sections',
                       'sections dataset, model, strategy, optim, train, compute')


def test_config_missing(tmp_path, capsys, no_data):
    one_line_error(capsys, train(tmp_path / 'nowhere.yaml'), f'config file not found: {tmp_path}/nowhere.yaml')


def test_empty_config_is_the_defaults(tmp_path, capsys, no_data):
    for text in ('', '# nothing set yet\n'):
        (tmp_path / 'empty.yaml').write_text(text)
        assert main(train(tmp_path / 'empty.yaml', '--dry-run', '--set', 'dataset.name=synthetic')) == 0
        out = capsys.readouterr().out
        assert out.startswith('dataset:\n  name: synthetic\n') and 'depth: 20' in out


# ----------------------------------------------------------------------------------------------- closed pipes
def closed_pipe_run(argv, unbuffered: bool):
    "`python -m incres argv` writing into a pipe whose reader is already gone: every write meets EPIPE."
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}
    if unbuffered: env['PYTHONUNBUFFERED'] = '1'
    r, w = os.pipe()
    os.close(r)
    try: return subprocess.run([sys.executable, '-m', 'incres', *argv], stdout=w, stderr=subprocess.PIPE, text=True,
                               env=env, timeout=300)
    finally: os.close(w)


@pytest.mark.parametrize('argv,unbuffered', [(['data', 'info', 'synthetic'], False),
                                             (['data', 'info', 'synthetic'], True),
                                             (['data', 'prepare', '--help'], False)])
def test_closed_pipe_is_quiet(argv, unbuffered):
    p = closed_pipe_run(argv, unbuffered)
    assert 'BrokenPipeError' not in p.stderr and 'Traceback' not in p.stderr and 'Exception ignored' not in p.stderr
    assert p.stderr == '' and p.returncode == 1, (p.returncode, p.stderr)


def test_head_pipeline():
    p = subprocess.run(f'{sys.executable} -m incres data info synthetic | head -1', shell=True, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith('synthetic: generated from fixed seeds')
    assert 'BrokenPipeError' not in p.stderr and 'Traceback' not in p.stderr


def test_closed_pipe_in_process(capsys, monkeypatch):
    class ClosedPipe:
        def write(self, s): raise BrokenPipeError(errno.EPIPE, 'Broken pipe')
        def flush(self): pass
    monkeypatch.setattr(sys, 'stdout', ClosedPipe())
    assert main(['data', 'info', 'synthetic']) == 1
    assert sys.stdout.write('more') == 4  # now os.devnull
    assert capsys.readouterr().err == ''

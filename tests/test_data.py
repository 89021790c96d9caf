"""incres.data on tiny fixtures the tests build themselves: every source kind, class-order mapping, byte
determinism, every bad input, augmentation and seeding, sharding, subsets and the CLI. No network, no real archives."""
import argparse
import errno
import gzip
import io
import pickle
import struct
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hypothesis import given, strategies as st
from PIL import Image

import incres.data as data
from incres.data import (CIFAR10_CLASSES, DATASETS, DataError, TensorBatches, add_cli, class_quota, derive_seed,
                         load_split, make_loaders, prepare, provenance, split_validation, stratified_first, verify)
from incres.io import WriteError

SIZES = (20, 10)  # the fixtures: 2 train and 1 test image per class


# ----------------------------------------------------------------------------------------------- fixtures
def tar_gz(path, files: dict):
    with tarfile.open(path, 'w:gz') as tar:
        for name, content in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(content)
            tar.addfile(ti, io.BytesIO(content))
    return path


def cifar_image(cls: int, i: int) -> np.ndarray:
    "A 3×32×32 image that encodes its class and index (in flat 8×8 blocks, so JPEG keeps it)."
    img = np.zeros((3, 32, 32), np.uint8)
    img[0] = 20 * cls
    img[1] = 100 + 40 * i
    img[2, :8, :8] = 200
    return img


def cifar_python_files(class_order=CIFAR10_CLASSES, n_train=2, n_test=1, image=cifar_image, extra_names=()):
    "Batch files in the official format; labels index `class_order`; data_batch_1 holds the whole train split."
    names = list(class_order) + list(extra_names)

    def batch(n):
        rows, labels = [], []
        for i in range(n):
            for c in CIFAR10_CLASSES:
                rows.append(image(CIFAR10_CLASSES.index(c), i).reshape(-1))
                labels.append(names.index(c))
        return pickle.dumps({'batch_label': 'fixture',
                             'data': np.stack(rows) if rows else np.zeros((0, 3072), np.uint8),
                             'labels': labels}, protocol=2)

    files = {f'data_batch_{k}': batch(n_train if k == 1 else 0) for k in range(1, 6)}
    files['test_batch'] = batch(n_test)
    files['batches.meta'] = pickle.dumps({'label_names': names, 'num_vis': 3072}, protocol=2)
    return files


def cifar_python_tar(path, **kw):
    return tar_gz(path, {f'cifar-10-batches-py/{k}': v for k, v in cifar_python_files(**kw).items()})


def encode(img: np.ndarray, fmt: str, **kw) -> bytes:
    "A C×H×W uint8 array as an image file."
    buf = io.BytesIO()
    Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(buf, fmt, **kw)
    return buf.getvalue()


def jpg(img: np.ndarray) -> bytes: return encode(img, 'JPEG', quality=95)
def png(img: np.ndarray) -> bytes: return encode(img, 'PNG')


def image_folder_tar(path, class_order=CIFAR10_CLASSES, n_train=2, n_test=1, image=cifar_image, encode=jpg,
                     suffix='.jpg', drop=(), extra=None):
    files = {}
    for split, n in (('train', n_train), ('test', n_test)):
        for c in class_order:
            for i in range(n):
                name = f'{split}/{c}/{i:04d}{suffix}'
                if name not in drop: files[name] = encode(image(CIFAR10_CLASSES.index(c), i))
    files.update(extra or {})
    return tar_gz(path, files)


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f'>{a.ndim}I', *a.shape) + a.astype(np.uint8).tobytes()


def fashion_idx_dir(d, n_train=2, n_test=1, size=28, gz=True, label_offset=0, n_labels=None):
    d.mkdir(parents=True, exist_ok=True)
    for split, n, prefix in (('train', n_train, 'train'), ('test', n_test, 't10k')):
        labels = (np.tile(np.arange(10), n) + label_offset)
        images = np.stack([np.full((size, size), 7 * l + i % 3, np.uint8) for i, l in enumerate(labels)])
        for what, a in (('images-idx3', images), ('labels-idx1', labels[:n_labels])):
            content = idx_bytes(a)
            f = d / f'{prefix}-{what}-ubyte{".gz" if gz else ""}'
            f.write_bytes(gzip.compress(content, mtime=0) if gz else content)
    return d


@pytest.fixture
def no_defaults(monkeypatch, tmp_path):
    "No default locations, an empty cache, and a download that would fail loudly if tried."
    monkeypatch.setattr(data, 'OFFICIAL_LOCATIONS', {})
    monkeypatch.setattr(data, 'COPY_LOCATIONS', {})
    monkeypatch.setenv('INCRES_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('INCRES_OFFLINE', '1')


def files_of(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def assert_nothing_written(root):
    assert not root.exists() or not any(root.iterdir()), sorted(p.name for p in root.iterdir())


# ----------------------------------------------------------------------------------------------- sources
def check_cifar_arrays(root):
    for split, n in zip(('train', 'test'), SIZES):
        x, y = load_split('cifar10', split, root)
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert torch.bincount(y).tolist() == [n // 10] * 10
        # the image's own class code (red ≈ 20·class) agrees with its label: classes mapped by name
        assert (x[:, 0].float().mean((1, 2)) - 20 * y).abs().max() < 3
    return load_split('cifar10', 'train', root)


def test_cifar_python_tarball_and_class_order(tmp_path):
    shuffled = tuple(CIFAR10_CLASSES[i] for i in (3, 9, 0, 5, 1, 8, 2, 7, 4, 6))
    prepare('cifar10', cifar_python_tar(tmp_path / 'a.tar.gz'), tmp_path / 'a', expected_sizes=SIZES, progress=False)
    prepare('cifar10', cifar_python_tar(tmp_path / 'b.tar.gz', class_order=shuffled), tmp_path / 'b',
            expected_sizes=SIZES, progress=False)
    xa, ya = check_cifar_arrays(tmp_path / 'a')
    xb, yb = check_cifar_arrays(tmp_path / 'b')
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # the meta's class order does not matter
    p = provenance('cifar10', tmp_path / 'a')
    assert p['source']['kind'] == 'cifar10-python' and p['source']['official'] is False
    assert p['classes'] == list(CIFAR10_CLASSES)
    assert p['splits']['train']['images'] == 20 and p['splits']['test']['per_class'] == [1] * 10
    assert set(p['source']['sha256']) == set(data.CIFAR10_BATCHES)


def test_cifar_python_extracted_and_torchvision_root(tmp_path):
    (tmp_path / 'root').mkdir()
    tarball = cifar_python_tar(tmp_path / 'root' / 'cifar-10-python.tar.gz')
    extracted = tmp_path / 'ex' / 'cifar-10-batches-py'
    extracted.mkdir(parents=True)
    for k, v in cifar_python_files().items(): (extracted / k).write_bytes(v)
    for src, root in ((tarball, 'r1'), (tmp_path / 'root', 'r2'), (extracted, 'r3'), (extracted.parent, 'r4')):
        prepare('cifar10', src, tmp_path / root, expected_sizes=SIZES, progress=False)
    # the identity is the batch files' content: tarball, torchvision root and extracted copy prepare the same bytes
    ref = files_of(tmp_path / 'r1' / 'cifar10')
    for root in ('r2', 'r3', 'r4'): assert files_of(tmp_path / root / 'cifar10') == ref


def test_image_folder_tarball_and_class_order(tmp_path):
    canonical = image_folder_tar(tmp_path / 'c.tar.gz')
    reordered = image_folder_tar(tmp_path / 'r.tar.gz', class_order=CIFAR10_CLASSES[::-1])
    prepare('cifar10', canonical, tmp_path / 'c', expected_sizes=SIZES, progress=False)
    prepare('cifar10', reordered, tmp_path / 'r', expected_sizes=SIZES, progress=False)
    xc, yc = check_cifar_arrays(tmp_path / 'c')
    xr, yr = check_cifar_arrays(tmp_path / 'r')
    assert torch.equal(xc, xr) and torch.equal(yc, yr)
    assert yc.tolist() == [c for c in range(10) for _ in range(2)]  # class, then file name
    pc, pr = provenance('cifar10', tmp_path / 'c'), provenance('cifar10', tmp_path / 'r')
    assert pc['source']['kind'] == 'cifar10-jpg' and not pc['source']['official']
    assert pc['splits'] == pr['splits']  # same arrays ...
    assert pc['source']['sha256'] != pr['source']['sha256']  # ... from different archives, and it says so


def test_image_folder_png_and_top_folder(tmp_path):
    files = {}
    for split, n in (('train', 2), ('test', 1)):
        for c in CIFAR10_CLASSES:
            for i in range(n): files[f'cifar10/{split}/{c}/{i}.png'] = png(cifar_image(CIFAR10_CLASSES.index(c), i))
    files['cifar10/README.txt'] = b'ignored'
    prepare('cifar10', tar_gz(tmp_path / 'p.tar.gz', files), tmp_path / 'd', expected_sizes=SIZES, progress=False)
    x, y = load_split('cifar10', 'train', tmp_path / 'd')
    assert provenance('cifar10', tmp_path / 'd')['source']['kind'] == 'cifar10-png'
    assert torch.equal(x[0], torch.from_numpy(cifar_image(0, 0)))  # PNG is lossless


@pytest.mark.parametrize('gz', [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    src = fashion_idx_dir(tmp_path / 'FashionMNIST' / 'raw', gz=gz)
    prepare('fashion_mnist', tmp_path, tmp_path / 'data', expected_sizes=SIZES)  # a torchvision root
    x, y = load_split('fashion_mnist', 'train', tmp_path / 'data')
    assert x.shape == (20, 1, 28, 28) and y.tolist() == list(range(10)) * 2
    assert torch.equal(x[:, 0, 0, 0].long(), 7 * y + torch.arange(20) % 3)
    p = provenance('fashion_mnist', tmp_path / 'data')
    assert p['source']['kind'] == 'fashion-mnist-idx' and p['source']['official'] is False
    assert p['classes'][0] == 'T-shirt/top' and p['classes'][-1] == 'Ankle boot'
    # the recorded identity is the decompressed content's: gzipped or not, the same sha256
    assert p['source']['sha256']['train-images-idx3-ubyte'] == data._sha256(idx_bytes(
        np.stack([np.full((28, 28), 7 * l + i % 3, np.uint8) for i, l in enumerate(np.tile(np.arange(10), 2))])))
    assert src.exists()


# ----------------------------------------------------------------------------------------------- determinism
def test_prepare_is_byte_deterministic(tmp_path):
    src = image_folder_tar(tmp_path / 'c.tar.gz')
    out = prepare('cifar10', src, tmp_path / 'd', expected_sizes=SIZES, progress=False)
    first = files_of(out)
    assert sorted(first) == ['provenance.json', 'test_images.npy', 'test_labels.npy', 'train_images.npy',
                             'train_labels.npy']
    prepare('cifar10', src, tmp_path / 'd', expected_sizes=SIZES, progress=False)
    assert files_of(out) == first
    assert sorted(p.name for p in (tmp_path / 'd').iterdir()) == ['cifar10']  # no temporary folders left
    assert files_of(prepare('cifar10', src, tmp_path / 'elsewhere', expected_sizes=SIZES, progress=False)) == first
    assert all(verify('cifar10', tmp_path / 'd').values())
    (out / 'test_labels.npy').write_bytes(first['test_labels.npy'][:-1] + bytes([first['test_labels.npy'][-1] ^ 1]))
    assert verify('cifar10', tmp_path / 'd')['test_labels.npy'] is False


def test_different_sources_differ(tmp_path):
    a = prepare('cifar10', cifar_python_tar(tmp_path / 'a.tar.gz'), tmp_path / 'a', expected_sizes=SIZES,
                progress=False)
    b = prepare('cifar10', image_folder_tar(tmp_path / 'b.tar.gz'), tmp_path / 'b', expected_sizes=SIZES,
                progress=False)
    pa, pb = provenance('cifar10', tmp_path / 'a'), provenance('cifar10', tmp_path / 'b')
    assert (pa['source']['kind'], pb['source']['kind']) == ('cifar10-python', 'cifar10-jpg')
    assert files_of(a)['provenance.json'] != files_of(b)['provenance.json']  # so the DVC hash differs too


# ----------------------------------------------------------------------------------------------- source search
def test_missing_source_names_every_option(tmp_path, no_defaults):
    for name, words in (('cifar10', ['torchvision download', '--source', 'cifar-10-python.tar.gz',
                                     'train/<class>/*.jpg']),
                        ('fashion_mnist', ['torchvision download', '--source',
                                           'apt-get install dataset-fashion-mnist'])):
        with pytest.raises(FileNotFoundError) as e:
            prepare(name, root=tmp_path / 'data')
        msg = str(e.value)
        assert '\n' not in msg and all(w in msg for w in words), msg
        assert_nothing_written(tmp_path / 'data')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        prepare('cifar10', tmp_path / 'nowhere.tar.gz', tmp_path / 'data')
    with pytest.raises(FileNotFoundError, match='no Fashion-MNIST IDX files'):
        prepare('fashion_mnist', tmp_path, tmp_path / 'data')
    assert_nothing_written(tmp_path / 'data')


def test_failed_download_falls_back_to_the_offline_copy(tmp_path, no_defaults, monkeypatch, capsys):
    import torchvision.datasets.utils as tvu
    def offline(*args, **kw): raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(tvu, 'download_url', offline)
    monkeypatch.setenv('INCRES_OFFLINE', '0')
    with pytest.raises(FileNotFoundError, match=r'download failed \(<urlopen error Name or service not known>\)'):
        prepare('cifar10', root=tmp_path / 'data')
    copy = image_folder_tar(tmp_path / 'copy.tar.gz')
    monkeypatch.setattr(data, 'COPY_LOCATIONS', {'cifar10': [str(copy)]})
    prepare('cifar10', root=tmp_path / 'data', expected_sizes=SIZES, progress=False)
    assert provenance('cifar10', tmp_path / 'data')['source']['kind'] == 'cifar10-jpg'
    assert 'using the copy' in capsys.readouterr().err


def test_torchvision_cache_is_used_without_the_network(tmp_path, no_defaults, monkeypatch):
    import torchvision.datasets.utils as tvu
    (tmp_path / 'cache').mkdir()
    cifar_python_tar(tmp_path / 'cache' / 'cifar-10-python.tar.gz')  # where torchvision's download would put it
    # the fixture is not the real file
    monkeypatch.setattr(tvu, 'check_integrity', lambda path, md5=None: path.is_file())
    prepare('cifar10', root=tmp_path / 'data', expected_sizes=SIZES)
    assert provenance('cifar10', tmp_path / 'data')['source']['kind'] == 'cifar10-python'


def test_official_locations_come_first(tmp_path, no_defaults, monkeypatch):
    (tmp_path / 'empty').mkdir()
    monkeypatch.setattr(data, 'OFFICIAL_LOCATIONS', {'fashion_mnist': [str(tmp_path / 'empty')]})
    with pytest.raises(FileNotFoundError, match='no Fashion-MNIST source found'):  # an empty folder is skipped
        prepare('fashion_mnist', root=tmp_path / 'data')
    fashion_idx_dir(tmp_path / 'debian')
    monkeypatch.setattr(data, 'OFFICIAL_LOCATIONS', {'fashion_mnist': [str(tmp_path / 'debian')]})
    prepare('fashion_mnist', root=tmp_path / 'data', expected_sizes=SIZES)
    assert load_split('fashion_mnist', 'test', tmp_path / 'data')[0].shape == (10, 1, 28, 28)


# ----------------------------------------------------------------------------------------------- bad input
def junk(path):
    path.write_bytes(b'\x1f\x8b' + b'garbage' * 99)  # a gzip magic number, then nonsense
    return path


def truncated(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


BAD_CIFAR = {
    'corrupt archive': (lambda d: junk(d / 'x.tar.gz'), 'corrupt or truncated archive'),
    'truncated python archive': (lambda d: truncated(cifar_python_tar(d / 'x.tar.gz')), 'corrupt or truncated archive'),
    'truncated image archive': (lambda d: truncated(image_folder_tar(d / 'x.tar.gz')), 'corrupt or truncated archive'),
    'not an archive of either kind': (lambda d: tar_gz(d / 'x.tar.gz', {'a/b.txt': b'hi'}), 'holds no images'),
    'missing batch': (lambda d: tar_gz(d / 'x.tar.gz', {f'c/{k}': v for k, v in cifar_python_files().items()
                                                        if k != 'data_batch_3'}),
                      'missing data_batch_3'),
    'corrupt pickle': (lambda d: tar_gz(d / 'x.tar.gz', {f'c/{k}': (v if k != 'test_batch' else v[:50])
                                                           for k, v in cifar_python_files().items()}),
                       'corrupt CIFAR-10 batch'),
    'wrong image size (python)': (lambda d: tar_gz(d / 'x.tar.gz', {f'c/{k}': v for k, v in cifar_python_files(
        image=lambda c, i: np.zeros((3, 16, 16), np.uint8)).items()}), 'wrong image size in'),
    'wrong image size (jpg)': (lambda d: image_folder_tar(d / 'x.tar.gz', extra={
                                   'train/cat/0001.jpg': jpg(np.zeros((3, 16, 16), np.uint8))}),
                               'wrong image size: '),
    'grey jpg of the wrong size': (lambda d: image_folder_tar(d / 'x.tar.gz', extra={
                                       'test/dog/0000.jpg': jpg(np.zeros((1, 28, 28), np.uint8))}),
                                   '3×28×28, cifar10 images are 3×32×32'),
    'undecodable jpg': (lambda d: image_folder_tar(d / 'x.tar.gz', extra={'test/dog/0000.jpg': b'\xff\xd8 not really'}),
                        'cannot decode'),
    'nine classes (jpg)': (lambda d: image_folder_tar(d / 'x.tar.gz', class_order=CIFAR10_CLASSES[:9]),
                           'has 9 class folders'),
    'eleven classes (python)': (lambda d: cifar_python_tar(d / 'x.tar.gz', extra_names=('unicorn',)), 'has 11 classes'),
    'renamed class (jpg)': (lambda d: image_folder_tar(d / 'x.tar.gz',
                                                       extra={'train/lorry/0000.jpg': jpg(cifar_image(9, 0))}),
                            'has 11 class folders'),
    'missing image': (lambda d: image_folder_tar(d / 'x.tar.gz', drop={'train/frog/0001.jpg'}),
                      'wrong number of images'),
}
BAD_FASHION = {
    'truncated gz': (lambda d: truncated(fashion_idx_dir(d / 'f') / 'train-images-idx3-ubyte.gz').parent,
                     'corrupt or truncated file'),
    'truncated idx': (lambda d: truncated(fashion_idx_dir(d / 'f', gz=False) / 't10k-images-idx3-ubyte').parent,
                      'truncated or corrupt IDX file'),
    'wrong image size': (lambda d: fashion_idx_dir(d / 'f', size=27), 'wrong image size'),
    'labels and images disagree': (lambda d: fashion_idx_dir(d / 'f', n_labels=19),
                                   'wrong number of images: train has 20 images but 19 labels'),
    'eleven classes': (lambda d: fashion_idx_dir(d / 'f', label_offset=1), 'wrong number of classes'),
}


@pytest.mark.parametrize('case', sorted(BAD_CIFAR))
def test_bad_cifar_sources(tmp_path, case):
    make, message = BAD_CIFAR[case]
    src = make(tmp_path)
    with pytest.raises(DataError) as e:
        prepare('cifar10', src, tmp_path / 'data', expected_sizes=SIZES, progress=False)
    assert isinstance(e.value, ValueError) and '\n' not in str(e.value)
    assert message in str(e.value), str(e.value)
    assert_nothing_written(tmp_path / 'data')


@pytest.mark.parametrize('keep,compressed', [(0.05, True), (0.5, True), (0.95, True), (-20, True), (0.05, False),
                                             (0.5, False)])
def test_truncated_anywhere(tmp_path, keep, compressed):
    "Cut anywhere (a plain tar: anywhere before its trailing zero padding, whose loss loses no data)."
    src = image_folder_tar(tmp_path / 'x.tar.gz')
    if not compressed:
        src = tmp_path / 'x.tar'
        src.write_bytes(gzip.decompress((tmp_path / 'x.tar.gz').read_bytes()))
    content = src.read_bytes()
    src.write_bytes(content[:int(len(content) * keep) if keep > 0 else keep])
    with pytest.raises(DataError):  # corrupt, cut short, or missing images: never silently accepted
        prepare('cifar10', src, tmp_path / 'data', expected_sizes=SIZES, progress=False)
    assert_nothing_written(tmp_path / 'data')


@pytest.mark.parametrize('case', sorted(BAD_FASHION))
def test_bad_fashion_sources(tmp_path, case):
    make, message = BAD_FASHION[case]
    with pytest.raises(DataError, match=message):
        prepare('fashion_mnist', make(tmp_path), tmp_path / 'data', expected_sizes=SIZES)
    assert_nothing_written(tmp_path / 'data')


def test_official_counts_by_default(tmp_path):
    with pytest.raises(DataError, match='train has 20, cifar10 has 50000'):
        prepare('cifar10', image_folder_tar(tmp_path / 'x.tar.gz'), tmp_path / 'data', progress=False)
    with pytest.raises(DataError, match='train has 20, fashion_mnist has 60000'):
        prepare('fashion_mnist', fashion_idx_dir(tmp_path / 'f'), tmp_path / 'data')
    assert_nothing_written(tmp_path / 'data')


def test_unknown_names(tmp_path):
    for bad in (lambda: prepare('mnist', root=tmp_path / 'data'), lambda: load_split('mnist', 'train'),
                lambda: make_loaders('cifar100')):
        with pytest.raises(ValueError, match='unknown dataset .* choose one of cifar10, fashion_mnist, synthetic'):
            bad()
    with pytest.raises(ValueError, match='generated'):
        prepare('synthetic', root=tmp_path / 'data')
    with pytest.raises(ValueError, match="split must be one of"):
        load_split('synthetic', 'validation')
    with pytest.raises(FileNotFoundError, match='incres data prepare cifar10'):
        load_split('cifar10', 'train', tmp_path / 'data')
    assert_nothing_written(tmp_path / 'data')


def test_failed_write_keeps_the_old_data(tmp_path, monkeypatch):
    src = image_folder_tar(tmp_path / 'c.tar.gz')
    out = prepare('cifar10', src, tmp_path / 'd', expected_sizes=SIZES, progress=False)
    before = files_of(out)
    real_rename = data.os.rename
    def failing_rename(a, b):
        if '.tmp-' in str(a): raise OSError('disk full')
        real_rename(a, b)
    monkeypatch.setattr(data.os, 'rename', failing_rename)
    with pytest.raises(OSError, match='disk full'):
        prepare('cifar10', src, tmp_path / 'd', expected_sizes=SIZES, progress=False)
    assert files_of(out) == before
    assert sorted(p.name for p in (tmp_path / 'd').iterdir()) == ['cifar10']
    with pytest.raises(OSError, match='disk full'):  # into a fresh root: the root goes again
        prepare('cifar10', src, tmp_path / 'fresh', expected_sizes=SIZES, progress=False)
    assert not (tmp_path / 'fresh').exists()


def test_failed_write_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    src = image_folder_tar(tmp_path / 'c.tar.gz')
    def full(a, b): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(data.os, 'rename', full)
    with pytest.raises(WriteError) as e:
        prepare('cifar10', src, tmp_path / 'd', expected_sizes=SIZES, progress=False)
    assert str(e.value) == (f'cannot write {tmp_path}/d/cifar10: the disk is full: '
                            'free some space or write somewhere else')
    assert e.value.errno == errno.ENOSPC and not (tmp_path / 'd').exists()


def test_root_is_checked_before_the_source_is_read(tmp_path, monkeypatch):
    def must_not_run(*args, **kw): raise AssertionError('read the source before checking the root')
    monkeypatch.setattr(data, 'read_source', must_not_run)
    (tmp_path / 'afile').write_text('x')
    for root, what in ((tmp_path / 'afile', 'it is'), (tmp_path / 'afile' / 'data', f'{tmp_path}/afile is')):
        with pytest.raises(WriteError) as e:
            prepare('fashion_mnist', fashion_idx_dir(tmp_path / 'f'), root, expected_sizes=SIZES)
        assert str(e.value) == (f'cannot write prepared data to {root}: {what} a file, not a folder: '
                                'pass a folder as --root')
    assert data._check_root(tmp_path / 'new' / 'data') == tmp_path / 'new' / 'data'
    monkeypatch.setattr(data.os, 'access', lambda path, mode: False)
    with pytest.raises(WriteError, match=r'is not writable \(permission denied\): pass another --root, or fix'):
        prepare('cifar10', root=tmp_path / 'new' / 'data')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WriteError, match=f'cannot write prepared data to data: {tmp_path} is not writable'):
        prepare('cifar10', root='data')
    assert not (tmp_path / 'new').exists() and not (tmp_path / 'data').exists()  # the check creates nothing


def test_unreadable_provenance(tmp_path):
    prepare('fashion_mnist', fashion_idx_dir(tmp_path / 'f'), tmp_path / 'data', expected_sizes=SIZES)
    (tmp_path / 'data' / 'fashion_mnist' / 'provenance.json').write_bytes(b'\xff{')
    with pytest.raises(DataError) as e:
        provenance('fashion_mnist', tmp_path / 'data')
    msg = str(e.value)
    assert msg.startswith(f'{tmp_path}/data/fashion_mnist/provenance.json is not valid JSON (') and '\n' not in msg
    assert msg.endswith('run `incres data prepare fashion_mnist` again')


# ----------------------------------------------------------------------------------------------- batches
def reference(image, offset, flip, info):
    "torchvision's RandomCrop(padding) + RandomHorizontalFlip + ToTensor + Normalize, with given parameters."
    p, s = info.crop_padding, info.size
    x = TF.crop(TF.pad(image, [p]), int(offset[0]), int(offset[1]), s, s)
    if flip: x = TF.horizontal_flip(x)
    return TF.normalize(x.float() / 255, list(info.mean), list(info.std))


@pytest.mark.parametrize('name,channels_last', [('synthetic', True), ('fashion_mnist', False)])
def test_augmentation_matches_torchvision(tmp_path, name, channels_last):
    if name == 'fashion_mnist':
        prepare(name, fashion_idx_dir(tmp_path / 'f', n_train=4), tmp_path / 'data', expected_sizes=(40, 10))
    info = DATASETS[name]
    images, labels = load_split(name, 'train', tmp_path / 'data')
    tb = TensorBatches(images, labels, info, batch_size=8, train=True, seed=5, channels_last=channels_last)
    tb.set_epoch(2)
    idx, offsets, flips = tb.plan()
    batches = list(tb)
    assert len(batches) == len(tb) == len(images) // 8
    for b, (x, y) in enumerate(batches):
        assert x.shape == (8,) + info.shape and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for j in range(8):
            k = 8 * b + j
            assert y[j] == labels[idx[k]]
            torch.testing.assert_close(x[j], reference(images[idx[k]], offsets[k], flips[k], info), atol=1e-5, rtol=0)
    assert flips.any() == info.flip  # Fashion-MNIST is never flipped
    assert offsets.min() >= 0 and offsets.max() <= 2 * info.crop_padding


def test_seeding():
    images, labels = load_split('synthetic', 'train')
    info = DATASETS['synthetic']
    def epoch(seed, e):
        tb = TensorBatches(images, labels, info, 32, train=True, seed=seed)
        tb.set_epoch(e)
        return [b for b in tb]
    a, b = epoch(0, 0), epoch(0, 0)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    for other in (epoch(1, 0), epoch(0, 1)):
        assert not torch.equal(a[0][1], other[0][1])
    for batches in (a, epoch(0, 1)):  # every epoch sees every sample once
        assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(labels.tolist())
    with pytest.raises(ValueError, match='non-negative'):
        TensorBatches(images, labels, info, 32, train=True, seed=-1)


def test_derive_seed():
    assert 'derive_seed' in data.__all__ and not hasattr(data, '_seed')
    assert derive_seed(0, 1) == 3964924996 == int(np.random.SeedSequence([0, 1]).generate_state(1)[0])
    assert derive_seed(np.int64(5), 2) == derive_seed(5, 2) != derive_seed(2, 5)
    for bad in ((0, -1), (-3,), ()):
        with pytest.raises(ValueError, match='non-negative'):
            derive_seed(*bad)
    # the batches every committed run saw: derive_seed drives the shuffle and the augmentation, bit for bit
    images, labels = load_split('synthetic', 'train')
    tb = TensorBatches(images, labels, DATASETS['synthetic'], 32, train=True, seed=0)
    tb.set_epoch(3)
    idx, offsets, flips = tb.plan()
    assert idx[:8].tolist() == [303, 119, 268, 263, 172, 328, 496, 93]
    assert offsets[:4].tolist() == [[4, 0], [3, 4], [3, 1], [0, 4]]
    assert flips[:8].tolist() == [True, False, False, True, False, False, False, False]
    g = torch.Generator().manual_seed(derive_seed(0, 3))
    assert torch.equal(idx, torch.randperm(512, generator=g)[:len(idx)])


@pytest.mark.parametrize('world_size', [2, 3])
def test_sharding(world_size):
    info = DATASETS['synthetic']
    images, labels = load_split('synthetic', 'train')
    shards = [TensorBatches(images, labels, info, 16, train=True, seed=1, rank=r, world_size=world_size)
              for r in range(world_size)]
    plans = [set(s.plan()[0].tolist()) for s in shards]
    assert len({len(s) for s in shards}) == 1 and len({len(p) for p in plans}) == 1
    assert len(set.union(*plans)) == sum(map(len, plans))  # disjoint
    test_images, test_labels = load_split('synthetic', 'test')
    evals = [TensorBatches(test_images[:253], test_labels[:253], info, 40, train=False, rank=r, world_size=world_size)
             for r in range(world_size)]
    assert len({len(e) for e in evals}) == 1
    assert torch.equal(torch.cat([y for e in evals for _, y in e]), test_labels[:253])  # all, in order
    assert sum(e.num_samples for e in evals) == 253
    with pytest.raises(ValueError, match='rank'):
        TensorBatches(images, labels, info, 16, train=True, rank=world_size, world_size=world_size)


def test_eval_batches_keep_everything():
    info = DATASETS['synthetic']
    x, y = load_split('synthetic', 'test')
    ev = TensorBatches(x, y, info, batch_size=100, train=False)
    got = list(ev)
    assert len(got) == len(ev) == 3 and all(len(b) <= 100 for _, b in got)
    assert torch.equal(torch.cat([b for _, b in got]), y)
    ref = TF.normalize(x.float() / 255, list(info.mean), list(info.std))
    torch.testing.assert_close(torch.cat([a for a, _ in got]), ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- subsets
@given(counts=st.lists(st.integers(3, 12), min_size=2, max_size=5), seed=st.integers(0, 100), data_=st.data())
def test_subset_and_validation_are_stratified(counts, seed, data_):
    k = len(counts)
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    n = data_.draw(st.integers(k, 3 * k))
    pool = stratified_first(labels, n, k)
    assert len(pool) == n and torch.bincount(labels[pool], minlength=k).tolist() == class_quota(n, k)
    for c in range(k):  # the first ones of each class
        first = (labels == c).nonzero().flatten()[:class_quota(n, k)[c]]
        assert set(first.tolist()) <= set(pool.tolist())
    v = data_.draw(st.integers(0, n - k))
    train, val = split_validation(labels, pool, v, k)
    assert not set(train.tolist()) & set(val.tolist()) and len(train) + len(val) == n
    assert torch.bincount(labels[val], minlength=k).tolist() == class_quota(v, k)


def test_make_loaders_quick_profile():
    ld = make_loaders('synthetic', batch_size=16, eval_batch_size=64, subset=100, val_size=20, seed=2)
    assert (ld.train.num_total, ld.val.num_total, ld.test.num_total) == (80, 20, 256)
    assert torch.bincount(ld.val.labels).tolist() == [2] * 10 and torch.bincount(ld.train.labels).tolist() == [8] * 10
    assert ld.train.train and not ld.val.train and not ld.test.train
    assert len(ld.train) == 5 and ld.info is DATASETS['synthetic']
    assert make_loaders('synthetic').val is None
    with pytest.raises(ValueError, match='val_size'):
        make_loaders('synthetic', subset=100, val_size=100)


# ----------------------------------------------------------------------------------------------- CLI
def cli(*argv):
    parser = argparse.ArgumentParser(prog='incres')
    add_cli(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, capsys, no_defaults):
    root = str(tmp_path / 'data')
    src = fashion_idx_dir(tmp_path / 'f', n_train=600, n_test=100)
    # the fixture has 6000/1000 images, not the official 60000/10000: the CLI reports it
    with pytest.raises(DataError, match='train has 6000, fashion_mnist has 60000'):
        cli('data', 'prepare', 'fashion_mnist', '--source', str(src), '--root', root)
    prepare('fashion_mnist', src, root, expected_sizes=(6000, 1000))
    assert cli('data', 'prepare', 'fashion_mnist', '--root', root, '--if-missing') == 0
    assert 'already prepared' in capsys.readouterr().err
    assert cli('data', 'info', 'fashion_mnist', '--root', root) == 0
    out = capsys.readouterr().out
    assert 'fashion-mnist-idx' in out and '6000 images' in out and '1000 images' in out and 'ok' in out
    (tmp_path / 'data' / 'fashion_mnist' / 'test_labels.npy').write_bytes(b'changed')
    assert cli('data', 'info', 'fashion_mnist', '--root', root) == 1
    assert 'CHANGED' in capsys.readouterr().out
    assert cli('data', 'info', 'synthetic') == 0
    with pytest.raises(ValueError, match='--all'):
        cli('data', 'prepare')
    with pytest.raises(ValueError, match='one dataset'):
        cli('data', 'prepare', '--all', '--source', str(src))
    with pytest.raises(ValueError, match='unknown dataset'):
        cli('data', 'prepare', 'imagenet')
    with pytest.raises(FileNotFoundError, match='no CIFAR-10 source found'):
        cli('data', 'prepare', '--all', '--root', str(tmp_path / 'other'))

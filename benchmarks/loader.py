"""Does the loader keep up? Batches per second of `incres.data.TensorBatches` (CIFAR-10 train split, augmentation on)
against ResNet-20 training steps per second (forward, backward and SGD step, channels last), in one process.

    .venv/bin/python benchmarks/loader.py                   # CPU here, CUDA where there is one
    .venv/bin/python benchmarks/loader.py --device cpu --threads 2

Uses the prepared data/cifar10 when present, else random uint8 images of the same shape (the loader's cost does not
depend on pixel values). Prints a table, then as the last line the ratio loader throughput / training-step throughput;
the target is at least 10.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from incres.data import DATASETS, TensorBatches, is_prepared, load_split
from incres.resnet import resnet


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def timed(fn, repeats, device):
    "Seconds per call of `fn` after one warm-up call."
    fn(); sync(device)
    start = time.perf_counter()
    for _ in range(repeats): fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--root', default='data', help='prepared data (default: data)')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s choice)')
    p.add_argument('--epochs', type=int, default=2, help='loader epochs to time')
    p.add_argument('--steps', type=int, default=5, help='training steps to time')
    p.add_argument('--pil-batches', type=int, default=2, help='batches of the per-image PIL pipeline to time (0: skip)')
    args = p.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device, info, bs = torch.device(args.device), DATASETS['cifar10'], args.batch_size

    if is_prepared('cifar10', args.root):
        images, labels = load_split('cifar10', 'train', args.root)
        what = f'{args.root}/cifar10 (prepared)'
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (info.num_train,) + info.shape, dtype=torch.uint8, generator=g)
        labels = torch.arange(info.num_train) % info.num_classes
        what = 'random uint8 of CIFAR-10 shape (data/cifar10 not prepared)'

    t = time.perf_counter()
    loader = TensorBatches(images, labels, info, bs, train=True, seed=0, device=device, channels_last=True)
    setup = time.perf_counter() - t

    def epochs():
        n = 0
        for e in range(args.epochs):
            loader.set_epoch(e)
            for x, y in loader: n += 1
        return n
    epochs(); sync(device)  # warm-up
    t = time.perf_counter(); n = epochs(); sync(device)
    loader_s = (time.perf_counter() - t) / n

    torch.manual_seed(0)
    net = resnet(20).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x, y = next(iter(loader))
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    step()
    step_s = timed(step, args.steps, device)

    rows = [('TensorBatches (crop+flip+normalise)', loader_s), ('ResNet-20 training step', step_s)]
    if args.pil_batches:
        from PIL import Image
        from torchvision import transforms as T
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(info.mean, info.std)])
        hwc = images[:bs].permute(0, 2, 3, 1).numpy()
        pil_s = timed(lambda: torch.stack([tf(Image.fromarray(a)) for a in hwc]).to(device), args.pil_batches, device)
        rows.append(('reference: per-image PIL pipeline, 1 process', pil_s))

    print(f'device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {bs}, '
          f'data: {what}')
    print(f'loader setup (pad + copy to device): {setup:.2f} s, timed over {n} batches; '
          f'training step over {args.steps} steps')
    print(f'| {"what":<46} | {"ms/batch":>9} | {"batches/s":>9} | {"images/s":>10} |')
    print(f'|{"-" * 48}|{"-" * 11}|{"-" * 11}|{"-" * 12}|')
    for name, s in rows:
        print(f'| {name:<46} | {1e3 * s:9.2f} | {1 / s:9.1f} | {bs / s:10.0f} |')
    print(f'loader/step throughput ratio: {step_s / loader_s:.1f}')


if __name__ == '__main__':
    main()

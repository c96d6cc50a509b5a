"""Plain helpers the test modules import: box makers and parity asserts."""
import torch


def random_boxes(n, generator, scale=100.0, dtype=torch.float32,
                 min_size=1.0):
    """``n`` valid (x1, y1, x2, y2) boxes inside ``[0, scale + size]``."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale \
        + min_size
    return torch.cat([xy, xy + wh], dim=-1).to(dtype)


def jitter_boxes(boxes, generator, amount=0.2):
    """Boxes near ``boxes``: corners moved by up to ``amount`` of the size."""
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = (torch.rand(boxes.shape, generator=generator,
                        dtype=torch.float64) * 2 - 1).to(boxes.dtype)
    out = boxes + noise * amount * wh
    return torch.cat([torch.minimum(out[:, :2], out[:, 2:]),
                      torch.maximum(out[:, :2], out[:, 2:])], dim=-1)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, what=''):
    """``torch.testing.assert_close`` with the parity tolerances we promise."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol,
                               msg=lambda m: f'{what}: {m}' if what else m)


def outputs_and_grads(modules, pred, *args):
    """``[(output, d sum(output) / d pred), ...]``: each module called on a
    fresh leaf copy of ``pred`` (the same input for mmloss and mmdet)."""
    results = []
    for module in modules:
        x = pred.clone().requires_grad_()
        out = module(x, *args)
        out.sum().backward()
        results.append((out.detach(), x.grad))
    return results

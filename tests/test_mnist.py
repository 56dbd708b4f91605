"""The real MNIST in $MNIST_CNN_DATA loads and verifies (training on it: test_predict.py)."""

from mnist_cnn import get_dataset_info, load_dataset, verify_folder


def test_real_mnist_loads_and_verifies(mnist_dir):
    data = load_dataset("mnist", mnist_dir)
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.bincount().tolist()[:2] == [5923, 6742]
    mean = data.train_images.float().div(255).mean().item()
    std = data.train_images.float().div(255).std().item()
    info = get_dataset_info("mnist")
    assert abs(mean - info.mean) < 1e-4 and abs(std - info.std) < 1e-4
    assert all(c.ok for c in verify_folder(info, mnist_dir))

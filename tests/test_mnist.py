"""Integration on the real MNIST in $MNIST_CNN_DATA: data integrity and a real accuracy bar."""

from mnist_cnn import TrainConfig, get_dataset_info, load_dataset, train, verify_folder


def test_real_mnist_loads_and_verifies(mnist_dir):
    data = load_dataset("mnist", mnist_dir)
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.bincount().tolist()[:2] == [5923, 6742]
    mean = data.train_images.float().div(255).mean().item()
    std = data.train_images.float().div(255).std().item()
    info = get_dataset_info("mnist")
    assert abs(mean - info.mean) < 1e-4 and abs(std - info.std) < 1e-4
    assert all(c.ok for c in verify_folder(info, mnist_dir))


def test_brief_training_on_a_subset_reaches_a_real_accuracy_bar(mnist_dir, tmp_path):
    config = TrainConfig(data_dir=str(mnist_dir), out=str(tmp_path), epochs=2, limit_train=10_000)
    result = train(config)
    # 200 steps of the reference recipe; the full recipe reaches over 99% on all 60,000
    assert result.final["test_accuracy"] >= 0.97, result.history
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]

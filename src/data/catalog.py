"""Published datasets' files and SHA-256: the IDX datasets (file names, default mirrors) and
CIFAR-10's binary version.

Checksums of the .gz files are those of the original gzip files (MNIST: LeCun et al.;
Fashion-MNIST: Xiao et al. 2017, zalandoresearch/fashion-mnist), as used by torchvision and
TensorFlow Datasets. The uncompressed files are pinned too (the SHA-256 of the published files
after gunzip), so a raw copy is verified as strictly as a gzipped one.
"""

from __future__ import annotations

from typing import NamedTuple


class IdxDataset(NamedTuple):
    mirror: str  # default base URL; <mirror>/<file> is fetched
    sha256: dict[str, str]  # file name (raw or .gz) -> SHA-256 hex digest


# The four files of an IDX dataset, by role; the loader accepts each raw or gzipped.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

IDX_DATASETS: dict[str, IdxDataset] = {
    "mnist": IdxDataset(
        mirror="https://storage.googleapis.com/cvdf-datasets/mnist",
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion_mnist": IdxDataset(
        mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
}


def download_hint(name: str, directory: str) -> str:
    """The command that fetches dataset `name` into `directory`, for error messages."""
    return f"python scripts/download_data.py --dataset={name} --dir={directory}"


# CIFAR-10's binary version (https://www.cs.toronto.edu/~kriz/cifar.html). The site publishes
# only the archive's MD5 (c32a1d4ab5d03f1284b67883e8d87530). The archive's SHA-256 (170,052,171
# bytes) is the one TensorFlow Datasets pins (tensorflow_datasets/url_checksums/cifar10.txt);
# the extracted files' SHA-256 are those torchvision-ruby pins
# (ankane/torchvision-ruby, lib/torchvision/datasets/cifar10.rb), not re-computed here.
CIFAR10_SHA256 = {
    "cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}

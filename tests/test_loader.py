import pytest
import torch

from model_store.loader import resolve_device
from model_store.variants import load_variant


def test_auto_device_follows_the_hardware():
    variant = load_variant("ti2v-5b")
    assert resolve_device(variant).type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_with_what_to_do():
    variant = load_variant("ti2v-5b").model_copy(update={"device": "cuda"})
    with pytest.raises(RuntimeError, match="num_gpus: 1 or set device: auto"):
        resolve_device(variant)

import pytest
import timm
import torch
import torch.nn.functional as F

from training.config import DecoderConfig, EncoderConfig, ModelConfig
from training.models import build_segmentor
from training.models.decoders.uperhead import pool_to_grid
from training.models.encoders import Encoder, build_encoder


def tiny_model_cfg(**encoder):
    return ModelConfig(num_classes=5, encoder=EncoderConfig(name="test_efficientnet", **encoder),
                       decoder=DecoderConfig(channels=8, pool_scales=[1, 2, 4]))


def test_encoder_exposes_channels_and_strides_that_match_its_outputs():
    encoder = build_encoder({"kind": "timm", "name": "test_efficientnet", "in_chans": 4})
    assert isinstance(encoder, Encoder)
    features = encoder(torch.zeros(1, 4, 64, 64))
    assert [f.shape[1] for f in features] == list(encoder.out_channels)
    assert [64 // f.shape[-1] for f in features] == list(encoder.strides) == [4, 8, 16, 32]


def test_unknown_encoder_kind_is_refused():
    with pytest.raises(ValueError, match="unknown encoder kind"):
        build_encoder({"kind": "magic", "name": "x"})


@pytest.mark.parametrize("size", [64, 96, 100])
def test_segmentor_logits_match_input_size(size):
    model = build_segmentor(tiny_model_cfg()).eval()
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 5, size, size)


def test_fixed_kernel_pooling_equals_adaptive_pooling():
    x = torch.randn(2, 3, 16, 16)
    for size in (1, 2, 4, 8):
        assert torch.allclose(pool_to_grid(x, size), F.adaptive_avg_pool2d(x, size), atol=1e-6)


def test_encoder_checkpoint_loads_local_weights(tmp_path):
    source = timm.create_model("test_efficientnet", pretrained=False)  # full model, with classifier
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    encoder = build_encoder(EncoderConfig(name="test_efficientnet", checkpoint=str(path)))
    assert torch.equal(encoder.body.conv_stem.weight, source.conv_stem.weight)


def test_encoder_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="no weights matching"):
        build_encoder(EncoderConfig(name="test_efficientnet", checkpoint=str(path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder(EncoderConfig(name="test_efficientnet", checkpoint=str(tmp_path / "nope.pth")))


def test_encoder_weights_load_from_a_whole_segmentor_checkpoint(tmp_path):
    """Finetuning starts from a trained model of ours: its encoder tensors are named encoder.body.*."""
    torch.manual_seed(3)
    segmentor = build_segmentor(tiny_model_cfg())
    path = tmp_path / "latest.pt"
    torch.save({"format": "mtp_training_checkpoint", "model": segmentor.state_dict()}, path)
    torch.manual_seed(4)  # a different random init, so equality below comes from the loading
    encoder = build_encoder(EncoderConfig(name="test_efficientnet", checkpoint=str(path)))
    for name, tensor in encoder.body.state_dict().items():
        assert torch.equal(tensor, segmentor.encoder.body.state_dict()[name]), name

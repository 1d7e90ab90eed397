import pickle

import pytest
import timm
import torch
import torchvision
from torch import nn

from kd_lightning.core.taps import FeatureTap, extract_logits, resolve_module
from kd_lightning.models import DigitsCNN


def test_tap_returns_logits_and_named_features_of_our_model():
    model = DigitsCNN(width=8)
    with FeatureTap(model, ["layer2", "logits", "layer3.1"]) as tap:
        outputs = tap(torch.randn(3, 1, 8, 8))
    assert list(outputs) == ["logits", "layer2", "layer3.1"]
    assert outputs["layer2"].shape == (3, 16, 4, 4)
    assert outputs["layer3.1"].shape == (3, 32, 2, 2)
    assert outputs["logits"].shape == (3, 10)


def test_tap_features_equal_the_modules_outputs():
    model = DigitsCNN(width=8).eval()
    x = torch.randn(2, 1, 8, 8)
    tap = FeatureTap(model, ["layer1"])
    outputs = tap(x)
    torch.testing.assert_close(outputs["layer1"], model.layer1(model.stem(x)))
    torch.testing.assert_close(outputs["logits"], model(x))


def test_tap_on_timm_model_by_name():
    model = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    tap = FeatureTap(model, ["layer3", "layer4.1.conv2"])
    outputs = tap(torch.randn(2, 3, 32, 32))
    assert outputs["logits"].shape == (2, 7)
    assert outputs["layer3"].shape == (2, 256, 2, 2)
    assert outputs["layer4.1.conv2"].shape == (2, 512, 1, 1)


def test_tap_on_torchvision_model_by_name():
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=5).eval()
    outputs = FeatureTap(model, ["features.3"])(torch.randn(2, 3, 32, 32))
    assert outputs["logits"].shape == (2, 5)
    assert outputs["features.3"].shape[:2] == (2, 24)


def test_misspelled_layer_name_lists_the_correct_name():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    with pytest.raises(ValueError, match="layer3") as error:
        FeatureTap(model, ["layr3"], role="student")
    assert "student ResNet has no submodule named 'layr3'" in str(error.value)


def test_remove_leaves_no_hooks_and_capture_stops():
    model = DigitsCNN(width=4)
    tap = FeatureTap(model, ["layer1", "layer2"])
    assert sum(len(m._forward_hooks) for m in model.modules()) == 2
    tap.remove()
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert "layer1" not in model.state_dict() and not any("tap" in key for key in model.state_dict())


def test_tuple_and_model_output_blocks_are_captured_by_their_hidden_states():
    """Transformer blocks return tuples (transformers 4) or ModelOutputs: the tap takes their first tensor."""

    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x

    class Named(nn.Module):
        def forward(self, x):
            return {"last_hidden_state": x + 1, "pooler_output": x.mean(1)}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.named = Pair(), Named()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.named(self.pair(x)[0])["last_hidden_state"])

    x = torch.randn(2, 4)
    outputs = FeatureTap(Net(), ["pair", "named"])(x)
    assert torch.equal(outputs["pair"], x * 2) and torch.equal(outputs["named"], x * 2 + 1)


def test_output_without_a_tensor_is_a_clear_error():
    class Nothing(nn.Module):
        def forward(self, x):
            return None

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.nothing = Nothing()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            self.nothing(x)
            return self.head(x)

    with pytest.raises(TypeError, match="'nothing' \\(Nothing\\) returned NoneType, which holds no tensor"):
        FeatureTap(Net(), ["nothing"])(torch.randn(2, 4))


def test_tapped_models_stay_picklable():
    model = DigitsCNN(width=4)
    tap = FeatureTap(model, ["layer1"])
    _, tap_copy = pickle.loads(pickle.dumps((model, tap)))
    assert tap_copy(torch.randn(1, 1, 8, 8))["layer1"].shape == (1, 4, 8, 8)


@pytest.mark.parametrize(
    "output",
    [torch.ones(2, 3), (torch.ones(2, 3), torch.zeros(2)), type("Out", (), {"logits": torch.ones(2, 3)})()],
)
def test_extract_logits_accepts_tensor_tuple_and_attribute(output):
    assert extract_logits(output).equal(torch.ones(2, 3))


def test_extract_logits_rejects_other_outputs():
    with pytest.raises(TypeError, match="expected the model to return logits"):
        extract_logits({"x": torch.ones(1)})


def test_resolve_module_finds_nested_paths():
    model = DigitsCNN(width=4)
    assert resolve_module(model, "layer2.1.0") is model.layer2[1][0]

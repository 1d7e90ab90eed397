import pytest
import torch
from safetensors.torch import save_file

from kd_lightning.models import DigitsCNN, DigitsMLP
from kd_lightning.teacher import freeze, load_weights, read_state_dict, strip_prefixes


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("prefix", "suffix", "wrap"),
    [
        ("", ".safetensors", None),
        ("", ".pt", None),
        ("model.", ".pt", "model"),
        ("module._orig_mod.", ".pth", None),
        ("student.", ".ckpt", "state_dict"),
    ],
)
def test_load_weights_strips_wrapper_prefixes(tmp_path, prefix, suffix, wrap):
    source = DigitsMLP(hidden=(8,))
    state = {prefix + key: value for key, value in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    target = load_weights(DigitsMLP(hidden=(8,)), path)
    assert _same_weights(source, target)


def test_strip_prefixes_prefers_the_network_that_matches():
    student, teacher = DigitsMLP(hidden=(8,)), DigitsCNN(width=4)
    mixed = {f"student.{k}": v for k, v in student.state_dict().items()}
    mixed |= {f"teacher.{k}": v for k, v in teacher.state_dict().items()}
    assert strip_prefixes(mixed, set(teacher.state_dict())).keys() == teacher.state_dict().keys()
    assert strip_prefixes(mixed, set(student.state_dict())).keys() == student.state_dict().keys()


def test_missing_checkpoint_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        read_state_dict(tmp_path / "nope.ckpt")
    assert "nope.ckpt" in str(error.value)
    assert "kd-lightning fit --config configs/digits/teacher.yaml" in str(error.value)


def test_checkpoint_of_other_architecture_lists_keys(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(DigitsMLP().state_dict(), path)
    with pytest.raises(ValueError) as error:
        load_weights(DigitsCNN(width=4), path)
    message = str(error.value)
    assert "does not fit DigitsCNN" in message
    assert "missing keys: head.1.bias, head.1.weight" in message and "(25 in all)" in message
    assert "unexpected keys: head.bias, head.weight, layer1.0.bias" in message
    assert "layer1.0.weight: checkpoint (32, 64) vs model (4, 4, 3, 3)" in message


def test_checkpoint_of_other_width_lists_shape_mismatches(tmp_path):
    path = tmp_path / "cnn.safetensors"
    save_file(DigitsCNN(width=8).state_dict(), str(path))
    with pytest.raises(ValueError, match=r"shape mismatches: head.1.weight: checkpoint \(10, 32\) vs model \(10, 16\)"):
        load_weights(DigitsCNN(width=4), path)


def test_freeze_turns_off_gradients_and_training():
    model = freeze(DigitsCNN(width=4))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())

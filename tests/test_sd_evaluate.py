"""rd.sd.evaluate's helpers: no FID without a network. (The whole evaluation runs in tests/test_train_sd.py.)"""
import torch

from rd.sd.evaluate import fid_reference


def test_no_inception_file_no_fid(tmp_path):
    assert fid_reference("", "shapes", torch.zeros(4, 3, 32, 32, dtype=torch.uint8), tmp_path, "cpu") == (None, None)
    assert not any(tmp_path.iterdir())

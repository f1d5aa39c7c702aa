"""Known answers, computed by hand, for the grade formula (caps included), the bonus, the
simplified FID and the pixel rounding: the numbers a student's grade is made of."""
import numpy as np
import pytest
import torch

from data_utils import cal_fid, to_uint8
from grade import compression_bonus, grade


def test_bonus_by_hand():
    assert compression_bonus(8) == pytest.approx(1.2 - 8 / 784)
    assert compression_bonus(784) == pytest.approx(0.2)
    assert compression_bonus(1) == pytest.approx(1.198724489795918)


@pytest.mark.parametrize("task, ssim, mse, fid, latent_dim, capped, uncapped", [
    # 5*0.9 + 50*0.09 = 9.0; x 1.189796 = 10.708 -> the cap of 10
    ("VAE0label", 0.9, 0.01, None, 8, 10.0, 10.708163265306122),
    # 5*0.8 + 50*0.05 = 6.5; x 1.189796 = 7.7337 (under the cap)
    ("VAE0label", 0.8, 0.05, None, 8, 7.733673469387755, 7.733673469387755),
    # an MSE above 0.1 earns nothing, never a negative term: 5*0.5 = 2.5; x (1.2 - 2/784) = 2.9936
    ("VAE0label", 0.5, 0.3, None, 2, 2.993622448979592, 2.993622448979592),
    # 10*0.8 + 100*0.08 + (10 - 3) = 23; x (1.2 - 16/784) = 27.1306
    ("Genwithlabel", 0.8, 0.02, 3.0, 16, 27.130612244897958, 27.130612244897958),
    # an FID above 10 earns nothing: 10*0.8 + 100*0.08 + 0 = 16
    ("Genwithlabel", 0.8, 0.02, 12.0, 16, 18.873469387755102, 18.873469387755102),
    # perfect at latent_dim 1: (10 + 10 + 10) x 1.198724 = 35.96 -> the cap of 30
    ("Genwithlabel", 1.0, 0.0, 0.0, 1, 30.0, 35.961734693877546),
])
def test_grade_by_hand(task, ssim, mse, fid, latent_dim, capped, uncapped):
    assert grade(task, ssim, mse, latent_dim, fid) == pytest.approx(capped, rel=1e-12)
    assert grade(task, ssim, mse, latent_dim, fid, capped=False) == pytest.approx(uncapped, rel=1e-12)


def test_simplified_fid_by_hand():
    real = np.array([[0.0, 0.0], [1.0, 1.0]])    # means (0.5, 0.5), population variances (0.25, 0.25)
    gen = np.array([[1.0, 0.0], [1.0, 0.0]])     # means (1, 0), variances (0, 0)
    # ||m_g - m_r||^2 = 0.25 + 0.25; sum(v_g + v_r - 2 sqrt(v_g v_r)) = 0.25 + 0.25
    assert cal_fid(real, gen) == pytest.approx(1.0)
    same = np.array([[0.2, 0.4], [0.6, 0.0], [1.0, 0.8]])
    assert cal_fid(same, same) == pytest.approx(0.0, abs=1e-15)
    # population variance, not the sample one: the second set spreads one pixel by +-0.1
    assert cal_fid(np.array([[0.5], [0.5]]), np.array([[0.4], [0.6]])) == pytest.approx(0.01)


def test_pixels_are_clamped_and_rounded_not_truncated():
    values = torch.tensor([-0.1, 0.0, 0.0019, 0.0021, 127.5 / 255, 0.998, 1.0, 1.2])
    # 0.0019*255 = 0.48 -> 0; 0.0021*255 = 0.54 -> 1; 127.5 -> 128; 254.49 -> 254
    assert to_uint8(values).tolist() == [0, 0, 0, 1, 128, 254, 255, 255]
    assert to_uint8(values).dtype == np.uint8

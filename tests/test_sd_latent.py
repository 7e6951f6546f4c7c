"""rd.sd.latent's pieces: prompt dropout for classifier-free guidance, and the module that joins the text tower to the
UNet. (Its sampling runs in tests/test_train_sd.py and tutorial 05.)"""
import torch

from rd.sd.latent import TextUNet, drop_prompts
from rd.sd.text import TextEncoder, TextEncoderConfig
from rd.unet import UNet, UNetConfig


def test_drop_prompts_nulls_whole_rows_at_the_rate_asked():
    tokens = torch.randint(1, 20, (4000, 6))
    out = drop_prompts(tokens, 0.1, torch.Generator().manual_seed(0))
    dropped = (out == 0).all(1)
    assert torch.equal(out[~dropped], tokens[~dropped]), "kept rows are untouched"
    assert 0.08 < dropped.float().mean().item() < 0.12
    assert torch.equal(drop_prompts(tokens, 0.0, torch.Generator()), tokens)


def test_text_unet_conditions_on_the_prompt_and_trains_both_towers():
    torch.manual_seed(0)
    text = TextEncoder(TextEncoderConfig(vocab_size=20, length=6, dim=32, layers=1))
    unet = UNet(UNetConfig(in_channels=4, resolution=8, channels=32, ch_mult=(1, 2), num_res_blocks=1,
                           attn_resolutions=(8,), dropout=0.0, context_dim=32))
    net = TextUNet(unet, text)
    for p in net.parameters():                                    # the zero-initialised layers: make them matter
        torch.nn.init.normal_(p, std=0.05)
    z, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    a, b = torch.randint(1, 20, (2, 6)), torch.randint(1, 20, (2, 6))
    out = net(z, t, a)
    assert out.shape == z.shape and not torch.allclose(out, net(z, t, b)), "the prompt changes the output"
    out.square().sum().backward()
    assert all(p.grad is not None for p in text.parameters()), "the text tower learns with the denoiser"

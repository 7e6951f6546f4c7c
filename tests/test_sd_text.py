"""rd.sd.text: the tokeniser round-trips, the text encoder's shapes, padding and gradients."""
import json

import pytest
import torch

from rd.sd.shapes import captions, make_shapes
from rd.sd.text import PAD, UNK, TextEncoder, TextEncoderConfig, Tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py



def shapes_tokenizer():
    return Tokenizer.from_texts(captions(make_shapes(200, seed=0)[1]))


def test_tokenizer_round_trip_unknown_empty_truncation_case():
    tok = shapes_tokenizer()
    assert tok.vocab[:2] == ["<pad>", "<unk>"] and tok.vocab[2:] == sorted(tok.vocab[2:]) and len(tok.vocab) == 17
    texts = ["a red circle on the left", "a yellow triangle at the bottom"]
    ids = tok.encode(texts, 12)
    assert ids.shape == (2, 12) and ids.dtype == torch.long and tok.decode(ids) == texts
    assert (ids[:, 6:] == PAD).all() and (ids[:, :6] != PAD).all()
    assert tok.encode(["a PURPLE circle"], 4)[0].tolist() == [tok.index["a"], UNK, tok.index["circle"], PAD]
    assert (tok.encode([""], 12) == PAD).all(), "the null prompt is all PAD"
    assert tok.encode(["a red circle on the left"], 3)[0].tolist() == tok.encode(["a red circle"], 3)[0].tolist()
    assert torch.equal(tok.encode(["A Red CIRCLE, on the left!"], 8), tok.encode(["a red circle on the left"], 8))
    assert Tokenizer.words("it's a 3-sided shape") == ["it's", "a", "3", "sided", "shape"]
    rebuilt = Tokenizer(json.loads(json.dumps(tok.vocab)))
    assert torch.equal(rebuilt.encode(texts, 12), ids)
    with pytest.raises(ValueError, match="starts with"):
        Tokenizer(["red", "<pad>", "<unk>"])


def encoder(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(vocab_size=17, **kw)).to(dtype)


def test_text_encoder_shapes_size_and_null_prompt():
    tok, enc = shapes_tokenizer(), encoder()
    assert 0.3e6 < sum(p.numel() for p in TextEncoder(TextEncoderConfig()).parameters()) < 0.5e6
    ids = tok.encode(["a red circle on the left", ""], 12)
    out = enc(ids)
    assert out.shape == (2, 13, 128), "a start token, then one row per position"
    assert torch.isfinite(out).all(), "the all-PAD null prompt must not give NaN (the start token is always a key)"
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="at most 12"):
        enc(tok.encode(["a red circle"], 13))


def test_padding_does_not_change_the_prompt_features():
    """PAD keys are masked: the start + word rows are the same whatever the padding length (float64 to be exact).
    If this fails, PAD tokens are being attended to."""
    tok, enc = shapes_tokenizer(), encoder(torch.float64)
    texts = ["a red circle on the left", "a blue square"]
    short, long = enc(tok.encode(texts, 6)), enc(tok.encode(texts, 12))
    torch.testing.assert_close(short[0, :7], long[0, :7], rtol=0, atol=1e-12)
    torch.testing.assert_close(short[1, :4], long[1, :4], rtol=0, atol=1e-12)
    other = enc(tok.encode(["a red circle on the right", "a blue circle"], 12))
    assert not torch.allclose(other[0, 1], long[0, 1]), "attention is bidirectional: 'a' sees the last word"


def test_text_encoder_gradients_reach_every_parameter_and_are_finite():
    tok, enc = shapes_tokenizer(), encoder()
    ids = tok.encode(["a red circle on the left at the top of a green square", ""], 12)
    enc(ids).square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == [], missing
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())

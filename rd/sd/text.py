"""τθ(y): text → token features (B, L + 1, dim) for the UNet's cross-attention, trained from scratch.  [LDM §3.3]

    tok = Tokenizer.from_texts(captions)             # word-level vocabulary: "<pad>", "<unk>", then sorted words
    ids = tok.encode(["a red circle on the left", ""], length=12)   # (2, 12) int64; "" is all PAD = the null prompt
    enc = TextEncoder(TextEncoderConfig(vocab_size=len(tok.vocab)))
    context = enc(ids)                               # (2, 13, 128): a learned start token, then one row per position

The stand-in for Stable Diffusion's frozen CLIP text tower [CLIP] and the trainable transformer τθ of the LDM
text-to-image model: token + learned positional embeddings → pre-LN transformer blocks → LayerNorm. It is trained
jointly with the denoiser by the diffusion loss (the caller puts its parameters in the optimiser), as LDM trains τθ.

Padding. PAD keys are masked out of every attention, so a prompt's features do not depend on how much padding
follows it. A learned start token (CLIP's start-of-text, always present, never masked) is prepended, so every
row has at least one key: the null prompt "" (all PAD) is well defined and gives no NaN; it is not a special case.
The output keeps every position, padding included (those rows attend to the prompt's tokens): SD's UNet likewise
cross-attends to all 77 CLIP positions, and rd.unet's cross-attention takes no mask.
"""
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

PAD, UNK = 0, 1                                      # ids of "<pad>" and "<unk>", the first two vocabulary entries
SPECIALS = ["<pad>", "<unk>"]


class Tokenizer:
    """Word-level tokeniser: lowercase, split on anything that is not a letter, digit or apostrophe, look words up.

    `vocab` is a plain list (save it in a checkpoint or JSON; Tokenizer(vocab) rebuilds the same tokeniser).
    """

    def __init__(self, vocab: list[str]):
        if list(vocab[:2]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS} (PAD = 0, UNK = 1), got {list(vocab[:2])}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has repeated entries; Tokenizer.from_texts builds a clean one")
        self.vocab = list(vocab)
        self.index = {word: i for i, word in enumerate(self.vocab)}

    @staticmethod
    def from_texts(texts: list[str]) -> "Tokenizer":
        """Vocabulary = SPECIALS + the sorted unique lowercased words of `texts`."""
        return Tokenizer(SPECIALS + sorted({w for text in texts for w in Tokenizer.words(text)}))

    @staticmethod
    def words(text: str) -> list[str]:
        """ "A red circle, on the LEFT!" → ["a", "red", "circle", "on", "the", "left"]."""
        return re.findall(r"[a-z0-9']+", text.lower())

    def encode(self, texts: list[str], length: int) -> Tensor:
        """texts → ids (B, length) int64: words truncated to `length`, then padded with PAD; unknown words → UNK."""
        ids = torch.full((len(texts), length), PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            row = [self.index.get(w, UNK) for w in self.words(text)[:length]]
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return ids

    def decode(self, ids: Tensor) -> list[str]:
        """ids (B, L) → texts, PAD dropped, unknown words shown as <unk> (for debugging)."""
        return [" ".join(self.vocab[i] for i in row if i != PAD) for row in ids.tolist()]


#----------------------------------------------------------------------------

@dataclass
class TextEncoderConfig:
    vocab_size: int = 64           # embedding rows (≥ len(tokenizer.vocab); the shapes captions need 17)
    length: int = 12               # longest token sequence accepted (the start token comes on top)
    dim: int = 128                 # feature width = the UNet's context_dim
    layers: int = 2                # transformer blocks
    heads: int = 4                 # attention heads (dim must divide by heads)


class Block(nn.Module):
    """x ← x + proj(attention(LN(x))) over unmasked keys;  x ← x + MLP(LN(x)), MLP = Linear → GELU → Linear, 4× wide."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, keep):                                          # x (B, L, D), keep (B, 1, 1, L) bool
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b n (three heads d) -> three b heads n d", three=3,
                            heads=self.heads)                           # each (B, heads, L, d_head)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)   # keys where keep is False get no weight
        x = x + self.proj(rearrange(out, "b heads n d -> b n (heads d)"))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """tokens (B, L) → features (B, L + 1, dim): [start; tokens] + positions → blocks → LayerNorm.  [LDM §3.3]

    Row 0 of the output is the start token, row 1 + i is token i. About 0.40 M parameters at the defaults.
    """

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} must be a multiple of heads {cfg.heads}")
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.start = nn.Parameter(torch.zeros(1, 1, cfg.dim))           # the always-present start token
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.length + 1, cfg.dim))
        for p in (self.token_emb.weight, self.start, self.pos_emb):
            nn.init.normal_(p, std=0.02)                                 # GPT-2's embedding initialisation
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, tokens: Tensor) -> Tensor:
        b, n = tokens.shape
        if n > self.cfg.length:
            raise ValueError(f"got {n} tokens but the encoder was built for at most {self.cfg.length} "
                             f"(TextEncoderConfig.length); encode with length={self.cfg.length}")
        x = torch.cat([self.start.expand(b, -1, -1), self.token_emb(tokens)], dim=1)   # (B, L + 1, D)
        x = x + self.pos_emb[:, :n + 1]
        keep = torch.cat([torch.ones_like(tokens[:, :1], dtype=torch.bool), tokens != PAD], dim=1)   # (B, L + 1)
        keep = keep[:, None, None, :]                                    # (B, 1, 1, L + 1): per key, every query
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x)

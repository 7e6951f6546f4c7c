"""The evaluation of a latent text-to-image run (train_sd.py): FID of decoded samples against the training images'
statistics, prompt fidelity (accuracy of an attribute classifier trained on real images, on samples drawn for
prompts of known attributes), the autoencoder's floor, and a prompts × (model, calls) figure.  [FID, CFG]"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import CIFAR_CLASSES, from_uint8, to_uint8
from ..dist import named_noise
from ..fid import fid, load_inception, reference_stats
from ..figures import image_table
from ..io import UnreadableFile, atomic_save, atomic_write_text
from .autoencoder import decode_latents, encode_latents
from .classifier import AttributeClassifier, ClassifierConfig, accuracy, train_classifier
from .data import eval_prompts, held_out_images
from .latent import generate_latents
from .shapes import ATTRIBUTES, PROMPTS


def fid_reference(inception_file: str, data: str, images, cache: Path, device):
    """(Inception network, (μ, Σ) of the training images' features, cached in `cache`); (None, None) without an
    Inception file."""
    if not inception_file:
        return None, None
    inception = load_inception(inception_file, device=device)
    return inception, reference_stats(f"{data}-train-{len(images)}", lambda: images, inception, cache_dir=cache,
                                      device=device)


def reconstruct(ae, images, scale: float, device):
    """uint8 images (N, 3, H, W) → encoded to scaled latents and decoded back, uint8 on `device`."""
    return to_uint8(decode_latents(ae, encode_latents(ae, from_uint8(images.to(device)), scale), scale))


def ae_latent_shape(ae, images, device) -> tuple:
    """(C, h, w) of the autoencoder's latents for these images."""
    with torch.no_grad():
        return tuple(ae.encode(from_uint8(images[:1].to(device)))[0].shape[1:])


@dataclass
class EvalSettings:
    """What the evaluation needs to know of a run (train_sd.py fills it from its flags of the same names)."""
    data: str            # shapes or cifar10
    cifar: str           # CIFAR-10's source, for its held-out test images (data=cifar10)
    inception: str       # TF-Inception TorchScript file ('': no FID)
    seed: int            # evaluation prompts and noise
    phases: int          # K of the phased student, sampled in K calls
    form: str            # the teacher's form, named in the table
    guidance: float      # the teacher's CFG scale, named in the table


def autoencoder_floor(args: EvalSettings, n_eval: int, ae, scale: float, images, out: Path, device) -> dict:
    """{"fid", "images"}: FID of the autoencoder's reconstructions of n_eval held-out images against the training
    images' statistics, every latent model's floor (args.inception needed); kept in out/ae/floor.json."""
    inception, ref = fid_reference(args.inception, args.data, images, out / "cache", device)
    held_out, _ = held_out_images(args.data, n_eval, args.seed, args.cifar, out / "cache")
    floor = {"fid": fid(reconstruct(ae, held_out, scale, device), *ref, inception, device=device, progress=False),
             "images": len(held_out)}
    atomic_write_text(json.dumps(floor), out / "ae" / "floor.json")
    return floor


def evaluate(args: EvalSettings, n_eval: int, clf_steps: int, out: Path, device, images, attrs, tokenizer,
             length: int, ae, scale: float, models: dict):
    """FID (decoded images vs the training images' statistics) and prompt fidelity per (model, calls); the figure.

    args: the run's EvalSettings; n_eval samples per row; the classifier trains clf_steps steps on (images, attrs)
    unless `out`/classifier holds it; models {name: (net, schedule, pred_type, guidance, phased)}. Writes results.md,
    results.json and prompts.png into `out`."""
    heads = tuple(len(v) for v in ATTRIBUTES.values()) if args.data == "shapes" else (len(CIFAR_CLASSES),)
    clf_path = out / "classifier" / "ckpt.pt"
    clf = AttributeClassifier(ClassifierConfig(heads=heads)).to(device)
    if clf_path.exists():
        try:
            clf.load_state_dict(torch.load(clf_path, map_location=device, weights_only=True))
        except Exception as err:                  # truncated, garbage, another classifier's shapes
            raise UnreadableFile(f"{clf_path} is not a readable classifier of this run ({type(err).__name__}); "
                                 f"delete it and rerun: the evaluation trains a new one") from err
    else:
        clf = train_classifier(images, attrs, ClassifierConfig(heads=heads), clf_steps, device=device,
                               seed=args.seed, flip=args.data == "cifar10")
        atomic_save(clf.state_dict(), clf_path)
    clf.eval()
    held_out, held_attrs = held_out_images(args.data, n_eval, args.seed, args.cifar, out / "cache")
    real_acc = accuracy(clf, held_out, held_attrs)
    inception, ref = fid_reference(args.inception, args.data, images, out / "cache", device)

    eval_attrs, eval_caps = eval_prompts(args.data, n_eval, args.seed)
    eval_tokens = tokenizer.encode(eval_caps, length).to(device)
    noise = named_noise(args.seed, "eval noise", (n_eval, *ae_latent_shape(ae, images, device)))   # no pair's ε
    fig_tokens = tokenizer.encode(list(PROMPTS), length).to(device) if args.data == "shapes" else eval_tokens[:len(PROMPTS)]
    fig_noise = noise[:len(fig_tokens)].to(device)
    calls = {"teacher": (25, 1, 2, 4)} | {name: ((args.phases,) if phased else (1, 2, 4))
                                          for name, (*_, phased) in models.items() if name != "teacher"}
    results, figure = {}, {}
    # the floors: real held-out images, and the same encoded and decoded by the autoencoder
    rec = reconstruct(ae, held_out, scale, device)
    for name, x in [("real held-out images", held_out.to(device)), ("autoencoder reconstructions", rec)]:
        results[(name, "–")] = (fid(x, *ref, inception, device=device, progress=False) if inception else None,
                                accuracy(clf, x, held_attrs))
    for name, (net, sch, pred, w, phased) in models.items():
        for k in calls[name]:
            z = generate_latents(net, noise.to(device), sch, pred, k, eval_tokens, guidance=w, phased=phased)
            x = to_uint8(decode_latents(ae, z, scale))
            fid_value = fid(x, *ref, inception, device=device, progress=False) if inception else None
            results[(name, k)] = (fid_value, accuracy(clf, x, eval_attrs))
            figure[(name, k)] = to_uint8(decode_latents(ae, generate_latents(net, fig_noise, sch, pred, k, fig_tokens,
                                                                             guidance=w, phased=phased), scale))

    fmt = lambda v, f: "—" if v is None else f.format(v)                              # noqa: E731
    jpeg = " (CIFAR-10: the JPEG copy)" if args.data == "cifar10" else ""
    lines = [f"train_sd.py, teacher form {args.form}, data {args.data}, {len(images)} training images, CFG scale "
             f"{args.guidance} for the teacher (students sample unguided: their pairs carry it); {n_eval} samples "
             f"per row; real held-out images score fidelity {real_acc:.3f}; FID against the training images' "
             f"statistics{jpeg}", "",
             "| model | calls | FID | prompt fidelity |", "|---|---|---|---|"]
    lines += [f"| {name} | {k} | {fmt(f, '{:.2f}')} | {a:.3f} |" for (name, k), (f, a) in results.items()]
    table = "\n".join(lines)
    print(table)
    atomic_write_text(table + "\n", out / "results.md")
    atomic_write_text(json.dumps({f"{n}@{k}": {"fid": f, "fidelity": a} for (n, k), (f, a) in results.items()}
                                 | {"real_fidelity": real_acc}, indent=1), out / "results.json")
    prompts = list(PROMPTS) if args.data == "shapes" else eval_caps[:len(PROMPTS)]
    image_table({f"{name}\n{k} call{'s' * (k > 1)}": x for (name, k), x in figure.items()}, prompts,
                out / "prompts.png")
    print(f"results in {out}/: results.md, results.json, prompts.png")

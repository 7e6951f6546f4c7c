"""The latent text-to-image stack of train_sd.py and tutorial 05, a small Stable Diffusion: captioned shapes (shapes),
the captioned data sets, shapes or CIFAR-10 (data), a tokeniser and text tower trained from scratch (text), a KL
autoencoder (autoencoder), the text-conditioned UNet with prompt dropout and guided few-step sampling (latent), the
attribute classifier that scores prompt fidelity (classifier) and the evaluation (evaluate). It builds on the method
core (rd.schedules … rd.rectify), rd.layers and rd.data; nothing in rd imports it (train_sd.py, tutorial 05 and the
tests do)."""

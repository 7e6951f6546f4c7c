"""The latent text-to-image stack of train_sd.py and tutorial 05, a small Stable Diffusion: captioned shapes (shapes),
a tokeniser and text tower trained from scratch (text), a KL autoencoder (autoencoder), the text-conditioned UNet
with prompt dropout and guided few-step sampling (latent), and the attribute classifier that scores prompt fidelity
(classifier). It builds on the method core (rd.schedules … rd.rectify) and rd.unet; nothing outside it imports it
but train_sd.py, the tutorials and the tests."""

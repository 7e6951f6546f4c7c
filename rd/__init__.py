"""rd: Rectified Diffusion from scratch.  t ∈ [0, 1], t = 0 data, t = 1 noise, x_t = α_t·x0 + σ_t·ε."""

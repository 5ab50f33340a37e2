"""DSD training: cache latents, train the condition embedder + LoRA on FLUX, export the adapter."""
